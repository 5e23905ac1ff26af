"""A drop-in for PAI's ``common_io`` package over aimaster's table layer.

``common_io.table.TableReader`` / ``TableWriter`` read and write the same table URLs as aimaster
(``odps://`` on MaxCompute or a local warehouse, Parquet paths), so code written for PAI runs
unchanged on a laptop or another cluster.
"""

from common_io import exception, table

__all__ = ["exception", "table"]
