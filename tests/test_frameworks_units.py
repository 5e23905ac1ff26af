"""Framework adapters, the parts that need no etcd: slice tags, row attribution, record_defaults."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import clean_env

from aimaster.errors import ConfigError, SchemaError
from aimaster.frameworks.stream import item_sizes
from aimaster.frameworks.tags import tags_of
from aimaster.frameworks.tf_types import convert, parse_record_defaults, to_columns


def test_import_aimaster_imports_no_framework():
    code = ("import sys, aimaster, aimaster.inference, aimaster.frameworks, aimaster.frameworks.stream\n"
            "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_tags_of_dict_batches_tuple_batches_and_untagged():
    batch = {"slice_id": ["000001", "000001", "000002"], "claim": ["1:a", "1:a", "2:b"], "path": ["x", "y", "z"]}
    assert tags_of(batch) == [("000001", "1:a", 1), ("000001", "1:a", 1), ("000002", "2:b", 1)]
    single = {"slice_id": "000003", "claim": "1:c"}  # DataLoader(batch_size=None)
    assert tags_of(single) == [("000003", "1:c", 1)]
    tf_like = ((np.array([1, 2]), np.array([0.5, 1.5])), np.array([b"000004", b"000005"], dtype=object))
    assert tags_of(tf_like) == [("000004", None, 1), ("000005", None, 1)]
    assert tags_of([1, 2, 3]) is None
    assert tags_of({"path": ["x"]}) is None
    assert tags_of((np.array([1.0]), np.array([2.0]))) is None  # numbers are never slice ids


def test_tagged_rows_keep_their_tags_through_default_collate():
    torch = pytest.importorskip("torch")
    from aimaster.frameworks.torch_table import tag

    a = tag([(1, b"x")], [("000000", "1:a", 1)])
    b = tag([(2, b"y")], [("000001", "1:b", 1)])
    assert a == [(1, b"x")] and isinstance(a, list)
    batch = torch.utils.data.default_collate([a, b])
    ids, strings = batch[0]
    assert ids.tolist() == [1, 2] and list(strings) == [b"x", b"y"]
    assert tags_of(batch) == [("000000", "1:a", 1), ("000001", "1:b", 1)]
    as_dicts = torch.utils.data.default_collate([tag({"v": 1}, [("000000", "1:a", 3)]),
                                                 tag({"v": 2}, [("000000", "1:a", 3)])])
    assert as_dicts["v"].tolist() == [1, 2] and tags_of(as_dicts) == [("000000", "1:a", 3)] * 2
    # A tensor result cannot carry tags: it stays what transform_fn returned.
    t = torch.zeros(2)
    assert tag(t, [("000000", "1:a", 1)]) is t


def test_output_rows_of_a_batch_spanning_slices_are_attributed_or_refused():
    assert item_sizes(6, [1, 1, 4], ["a", "b"]) == [1, 1, 4]  # one output row per input row
    assert item_sizes(3, [1, 1, 4], ["a", "b"]) == [1, 1, 1]  # one output row per item
    with pytest.raises(ConfigError, match="cannot be attributed"):
        item_sizes(5, [1, 1, 4], ["a", "b"])


def test_record_defaults_types_and_null_defaults():
    cols = parse_record_defaults((0, 0.0, "", True, np.int32(7), np.float64(1.5), [b"z"]))
    assert [c.dtype for c in cols] == ["int64", "float32", "string", "bool", "int32", "float64", "string"]
    assert cols[4].default == 7 and cols[6].default == b"z"
    rows = [(1, 2.5, b"a", False, 3, 4.5, "u"), (None, None, None, None, None, None, None)]
    columns = to_columns(rows, cols, list("abcdefg"), "t")
    assert columns[0].tolist() == [1, 0] and columns[0].dtype == np.int64
    assert columns[1].dtype == np.float32 and columns[5].dtype == np.float64
    assert columns[2].tolist() == [b"a", b""] and columns[6].tolist() == [b"u", b"z"]
    assert columns[3].tolist() == [False, True] and columns[4].tolist() == [3, 7]
    assert convert(b"12", cols[0], "a", "t") == 12  # numeric strings convert, as in PAI
    with pytest.raises(SchemaError, match="column 'a'"):
        convert(b"twelve", cols[0], "a", "t")
    with pytest.raises(ConfigError):
        parse_record_defaults(())
    with pytest.raises(ConfigError, match="unsupported type"):
        parse_record_defaults((object(),))
