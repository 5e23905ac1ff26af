"""The seed's SDK: ``from aimaster import inference as elastic_inference``."""

from aimaster.inference.posix import PosixFileClient, PosixFileConfig

__all__ = ["PosixFileConfig", "PosixFileClient"]
