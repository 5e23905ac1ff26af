"""Framework adapters (PyTorch, TensorFlow) over a job's slices. Each imports its framework lazily.

* ``PosixFileClient.create_torch_dataset`` / ``create_tf_dataset`` and
  ``MaxComputeTableClient.create_torch_dataset`` / ``create_tf_dataset`` build the datasets
  (:mod:`~aimaster.frameworks.torch_files`, :mod:`~aimaster.frameworks.torch_table`,
  :mod:`~aimaster.frameworks.tf_files`, :mod:`~aimaster.frameworks.tf_table`);
* :func:`track` (or a PyTorch dataset's ``track(loader)``) consumes their batches and commits each
  slice once it is consumed and its outputs written (:mod:`~aimaster.frameworks.stream`).

Readers claim (:mod:`~aimaster.frameworks.feed`), the consumer adopts and commits
(:mod:`~aimaster.frameworks.claims`); see docs/frameworks.md.
"""


def track(client, batches, on_slice_done=None, filter_value=None):
    """Consume ``batches`` of ``client``'s framework dataset; see :func:`aimaster.frameworks.stream.track`."""
    from aimaster.frameworks.stream import track as _track

    return _track(client, batches, on_slice_done, filter_value)


__all__ = ["track"]
