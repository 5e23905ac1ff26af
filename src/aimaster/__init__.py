"""aimaster: elastic, distributed, offline batch inference (PAI ElasticBatch compatible).

``from aimaster import inference as elastic_inference`` gives the SDK classes;
``aimaster.data.OutOfRangeException`` is raised when a dataset has no slice left.
"""

from aimaster import data, errors  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name):
    # ``inference`` pulls in the table layer; import it on first use so ``import aimaster`` stays fast.
    if name == "inference":
        import importlib

        return importlib.import_module("aimaster.inference")
    raise AttributeError(name)
