"""PAI ElasticBatch's SDK: ``from aimaster import inference as elastic_inference`` (see docs/api.md)."""

from aimaster.data.runtime import install_excepthook
from aimaster.inference.posix import PosixFileClient, PosixFileConfig
from aimaster.inference.table import MaxComputeTableClient, MaxComputeTableConfig, TableWriter

install_excepthook()

__all__ = ["PosixFileConfig", "PosixFileClient", "MaxComputeTableConfig", "MaxComputeTableClient", "TableWriter"]
