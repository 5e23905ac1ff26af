"""Every attempt at a slice, speculative copies included, stages under a name of its own.

The name (``attempt_ordinal``) is ``"<ordinal>.<attempt id>"``: MaxCompute derives the attempt's
upload block from the ordinal, the local sinks use the whole name as the staging file's. Copies of
one attempt share its attempt number, so their ordinals are taken in etcd, never twice.
"""

from __future__ import annotations

import pytest

from aimaster.data.coordinator import Claim, Dataset, PlanData
from aimaster.inference.table import NoCopySlot, attempt_ordinal


@pytest.fixture
def dataset(make_session):
    ds = Dataset(make_session("w-names"), "t-names")
    ds.ensure_plan(lambda: PlanData("table", 4, {"url": "x"}), 1)
    return ds


def _ordinal(claim) -> int:
    return int(attempt_ordinal(claim).split(".")[0])


def test_copies_of_one_attempt_get_distinct_block_ordinals(dataset):
    dataset.store.put(dataset.k.base + "sink", {"kind": "odps", "url": "odps://p/tables/t", "sessions": ["s"],
                                                "slice_count": 4, "attempts_per_slice": 15,
                                                "copies_per_attempt": 2})
    primary = Claim(dataset, "000001", 1, "w0.aaaa0000", 1, 0)
    copies = [Claim(dataset, "000001", 1, f"w{i}.bbbb000{i}", 1, 0, backup=True) for i in (1, 2)]
    assert [_ordinal(c) for c in [primary, *copies]] == [0, 1, 2]
    assert attempt_ordinal(copies[0]) == attempt_ordinal(copies[0]) == "1.w1.bbbb0001"  # memoized
    retry = Claim(dataset, "000001", 1, "w3.cccc0000", 2, 0)
    retry_copy = Claim(dataset, "000001", 1, "w0.dddd0000", 2, 0, backup=True)
    assert (_ordinal(retry), _ordinal(retry_copy)) == (3, 4)
    with pytest.raises(NoCopySlot):  # a third copy of attempt 1: the layout left room for two
        attempt_ordinal(Claim(dataset, "000001", 1, "w4.eeee0000", 1, 0, backup=True))
    other_slice = Claim(dataset, "000002", 2, "w4.ffff0000", 1, 0, backup=True)
    assert _ordinal(other_slice) == 1


def test_a_copy_of_a_committed_slice_gets_no_ordinal(dataset):
    dataset.store.put(dataset.k.base + "sink", {"kind": "odps", "url": "odps://p/tables/t", "sessions": ["s"],
                                                "slice_count": 4, "attempts_per_slice": 16})
    dataset.store.put(dataset.k.done + "000003", {"w": "w0", "at": "w0.x"})
    with pytest.raises(NoCopySlot):
        attempt_ordinal(Claim(dataset, "000003", 3, "w1.late0000", 1, 0, backup=True))


def test_file_staging_names_differ_for_copies_of_one_attempt(dataset):
    dataset.store.put(dataset.k.base + "sink", {"kind": "warehouse", "url": "odps://p/tables/t"})
    names = {attempt_ordinal(Claim(dataset, "000001", 1, f"w{i}.a{i}", 1, 0, backup=True)) for i in range(3)}
    assert len(names) == 3
    assert attempt_ordinal(Claim(dataset, "000001", 1, "host/name:7.ab", 1, 0)) == "0.host-name-7.ab"
