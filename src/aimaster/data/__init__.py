"""Slices and their coordination through etcd."""


class OutOfRangeException(Exception):
    """Raised by ``get_next_slice()`` when every slice of the dataset is committed (or failed)."""


__all__ = ["OutOfRangeException"]
