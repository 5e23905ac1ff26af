"""`Store.txn` on relative keys with the project's own `Compare` / `Op`, against a real etcd."""

from __future__ import annotations

import pytest

from aimaster.data.store import Compare, EtcdConfig, Op, Store, dumps, job_prefix


@pytest.fixture
def store(etcd, job_id):
    st = Store(EtcdConfig([etcd.endpoint], retry_seconds=10), job_prefix(job_id))
    yield st
    st.close()


def _revisions(store, rel):
    _, meta = store.get_raw(rel)
    return meta.mod_revision, meta.create_revision


def test_put_writes_under_the_job_prefix_and_dumps_values(store):
    ok, _ = store.txn("write", [], [Op.put("a/json", {"b": 1, "a": [2]}), Op.put("a/text", "raw"),
                                    Op.put("a/bytes", b"\x00\x01")])
    assert ok
    assert store.get_value("a/json") == {"a": [2], "b": 1}
    assert store.get_raw("a/json")[0] == dumps({"a": [2], "b": 1}).encode()
    assert store.get_raw("a/text")[0] == b"raw"
    assert store.get_raw("a/bytes")[0] == b"\x00\x01"
    raw, meta = store.call("absolute get", lambda c: c.get(store.prefix + "a/text"))
    assert raw == b"raw" and meta.key.decode() == store.prefix + "a/text"


def test_put_with_lease_goes_with_the_lease(store):
    lease = store.grant_lease(5)
    store.txn("leased put", [], [Op.put("leased", {"w": 1}, lease=lease)])
    _, meta = store.get_raw("leased")
    assert meta.lease_id == lease.id
    store.revoke_lease(lease)
    assert store.get_raw("leased") == (None, None)


def test_get_delete_and_delete_prefix(store):
    for rel in ("p/1", "p/2", "pq", "other"):
        store.put(rel, {"k": rel})
    ok, responses = store.txn("read", [], [Op.get("p/1"), Op.get("missing")])
    assert ok
    (raw, meta), = responses[0]
    assert raw == dumps({"k": "p/1"}).encode() and meta.key.decode() == store.prefix + "p/1"
    assert list(responses[1]) == []
    store.txn("delete one", [], [Op.delete("other")])
    assert store.get_value("other") is None
    store.txn("delete a prefix", [], [Op.delete_prefix("p/")])
    assert store.keys("") == ["pq"]


@pytest.mark.parametrize("kind", ["mod", "create"])
def test_revision_compares(store, kind):
    store.put("r", {"v": 1})
    store.put("r", {"v": 2})  # mod and create revisions now differ
    mod, create = _revisions(store, "r")
    revision = mod if kind == "mod" else create
    make = getattr(Compare, kind)
    assert store.txn("equal", [make("r") == revision])[0]
    assert not store.txn("equal, wrong", [make("r") == revision + 100])[0]
    assert store.txn("not equal", [make("r") != revision + 100])[0]
    assert not store.txn("not equal, wrong", [make("r") != revision])[0]
    assert store.txn("less", [make("r") < revision + 1])[0]
    assert not store.txn("less, wrong", [make("r") < revision])[0]
    assert store.txn("greater", [make("r") > revision - 1])[0]
    assert not store.txn("greater, wrong", [make("r") > revision])[0]
    assert store.txn("missing key", [make("nothing here") == 0])[0]


def test_version_compare(store):
    assert store.txn("absent", [Compare.version("v") == 0])[0]
    store.put("v", {"n": 1})
    assert not store.txn("absent, wrong", [Compare.version("v") == 0])[0]
    assert store.txn("present", [Compare.version("v") > 0])[0]
    store.put("v", {"n": 2})
    assert store.txn("written twice", [Compare.version("v") == 2])[0]


def test_value_compare_dumps_like_put(store):
    record = {"w": "worker-1", "t": 1.5}
    store.put("m", record)
    assert store.txn("same record", [Compare.value("m") == record])[0]
    assert store.txn("same text", [Compare.value("m") == dumps(record)])[0]
    assert store.txn("same bytes", [Compare.value("m") == dumps(record).encode()])[0]
    assert not store.txn("other record", [Compare.value("m") == dict(record, t=2)])[0]
    assert store.txn("not the other record", [Compare.value("m") != dict(record, t=2)])[0]


def test_prefix_version_compare(store):
    assert store.txn("empty prefix", [Compare.prefix_version("b/1/") == 0])[0]
    store.put("b/10", {})  # beside the prefix, not under it
    assert store.txn("still empty", [Compare.prefix_version("b/1/") == 0])[0]
    store.put("b/1/w", {})
    assert not store.txn("one key under it", [Compare.prefix_version("b/1/") == 0])[0]


def test_failure_ops_run_when_a_compare_fails(store):
    store.put("x", {"n": 1})
    ok, responses = store.txn("create if absent", [Compare.version("x") == 0], [Op.put("x", {"n": 2})],
                              [Op.get("x")])
    assert not ok
    (raw, _), = responses[0]
    assert raw == dumps({"n": 1}).encode()
    assert store.get_value("x") == {"n": 1}


def test_pyetcd_ops_on_absolute_keys_are_refused(store):
    """A pyetcd op names an absolute key: mixed with relative ones it would miss, so none is taken."""
    tx = store.client.transactions
    key = store.key("legacy")
    with pytest.raises(TypeError, match="transaction 'legacy'.*is not a Compare"):
        store.txn("legacy", [tx.version(key) == 0], [Op.put("legacy", {"a": 1})])
    with pytest.raises(TypeError, match="transaction 'legacy'.*is not an Op"):
        store.txn("legacy", [Compare.version("legacy") == 0], [tx.put(key, dumps({"a": 1}))])
    assert store.get_value("legacy") is None


@pytest.mark.parametrize("kind", ["mod", "version", "create", "prefix_version"])
@pytest.mark.parametrize("operand", ["3", 2.0, None, True, {"a": 1}])
def test_bad_operand_is_refused_where_it_is_written(kind, operand):
    with pytest.raises(TypeError, match=r"Compare\.\w+\('k'\) compares with an int"):
        getattr(Compare, kind)("k") == operand  # noqa: B015


def test_what_is_not_a_compare_or_op_is_refused_naming_the_transaction(store):
    with pytest.raises(TypeError, match="'claim slice 7'.*not a Compare"):
        store.txn("claim slice 7", [("version", "k", 0)])
    with pytest.raises(TypeError, match="'claim slice 7'.*not an Op"):
        store.txn("claim slice 7", [], ["put k"])
    with pytest.raises(TypeError, match="has no comparison"):
        store.txn("unfinished", [Compare.version("k")])
    with pytest.raises(TypeError, match="already complete"):
        (Compare.version("k") == 0) == 1  # noqa: B015


@pytest.mark.parametrize("name", ["Op.put", "Op.delete", "Op.delete_prefix", "Op.get", "Compare.mod", "Compare.value"])
def test_absolute_or_empty_keys_are_refused(store, name):
    owner, method = name.split(".")
    build = getattr({"Op": Op, "Compare": Compare}[owner], method)
    args = ({},) if name == "Op.put" else ()
    with pytest.raises(TypeError, match="absolute key"):
        build(store.key("k"), *args)
    with pytest.raises(TypeError, match="relative to the job prefix"):
        build("", *args)
    with pytest.raises(TypeError, match="relative to the job prefix"):
        build(None, *args)


# --- the named reads that replace raw client calls --------------------------------------------------


def test_raw_reads_are_relative_and_undecoded(store):
    for i in range(5):
        store.put(f"s/{i}", {"i": i})
    store.txn("garbage", [], [Op.put("s/9", b"not json")])
    assert store.get_raw("s/9")[0] == b"not json"
    assert store.get_raw("s/nothing") == (None, None)
    assert store.count_between("s/1", "s/4") == 3
    assert [(rel, raw) for rel, raw, _ in store.raw_between("s/1", "s/9", limit=2)] == [
        ("s/1", b'{"i":1}'), ("s/2", b'{"i":2}')]
    assert [rel for rel, _, _ in store.raw_between("s/3", "s/:", limit=10)] == ["s/3", "s/4", "s/9"]


def test_changed_since_reads_only_newer_writes(store):
    store.put("c/a", {"n": 1})
    everything = store.changed_since("c/", 0)
    assert [rel for rel, _, _ in everything] == ["c/a"]
    seen = everything[0][2].mod_revision
    assert store.changed_since("c/", seen) == []
    store.put("c/b", {"n": 2})
    assert [(rel, raw) for rel, raw, _ in store.changed_since("c/", seen)] == [("c/b", b'{"n":2}')]


def test_with_prefix_shares_the_connection(store, job_id):
    index = store.with_prefix(f"/aimaster/v1/test-index-{job_id}")
    assert index.prefix == f"/aimaster/v1/test-index-{job_id}/" and index._client is store._client
    index.put(job_id, {"state": "Running"})
    assert index.get_value(job_id) == {"state": "Running"}
    assert store.get_value(job_id) is None  # the job's own prefix is another place
    index.delete_prefix("")


def test_a_nested_transaction_is_decided_by_its_own_compares(store):
    store.put("taken", {"w": 1})
    ok, responses = store.txn("commit and claim ahead", [Compare.version("done") == 0], [
        Op.put("done", {"w": 1}),
        Op.txn([Compare.version("taken") == 0], [Op.put("taken", {"w": 2})], [Op.get("taken")]),
        Op.txn([Compare.version("free") == 0], [Op.put("free", {"w": 1})]),
    ])
    assert ok
    assert not responses[1].response_txn.succeeded and responses[2].response_txn.succeeded
    assert store.get_value("taken") == {"w": 1} and store.get_value("free") == {"w": 1}
    assert store.get_value("done") == {"w": 1}
    with pytest.raises(TypeError, match="'bad nest'.*not a Compare"):
        store.txn("bad nest", [], [Op.txn(["version"], [])])


def test_revoke_lease_takes_a_lease_or_its_id(store):
    for as_id in (False, True):
        lease = store.grant_lease(30)
        store.put("by-lease", {}, lease=lease)
        store.revoke_lease(lease.id if as_id else lease)
        assert store.get_raw("by-lease") == (None, None)
    store.revoke_lease(123456789)  # no such lease: nothing to do, no error


def test_a_transaction_etcd_refuses_is_an_error_not_a_retry(store):
    """A request etcd itself rejects (one key written twice in a transaction) fails at once, as a
    gRPC error: built messages go through the same error handling as pyetcd's own calls."""
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        store.txn("twice", [], [Op.put("dup/k", "a"), Op.put("dup/k", "b")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert store.get_raw("dup/k")[0] is None


def test_nested_transaction_and_leased_put(store):
    lease = store.grant_lease(10)
    ok, responses = store.txn("nested", [], [
        Op.put("n/outer", "o"),
        Op.txn([Compare.version("n/inner") == 0], [Op.put("n/inner", "i", lease=lease)], [Op.get("n/outer")])])
    assert ok and responses[-1].response_txn.succeeded
    assert store.get_raw("n/inner")[1].lease_id == lease.id
    ok, responses = store.txn("nested again", [], [
        Op.txn([Compare.version("n/inner") == 0], [Op.put("n/inner", "x")], [Op.get("n/outer")])])
    inner = responses[-1].response_txn
    assert ok and not inner.succeeded and inner.responses[0].response_range.kvs[0].value == b"o"
    store.revoke_lease(lease)
    assert store.get_raw("n/inner")[0] is None
