"""Counting a worker's etcd round trips by kind, for the test programs that check them."""

from collections import Counter


def count_rpcs(store) -> Counter:
    """Wrap ``store.call``: the returned counter gets one per call, keyed by the first word of the
    call's description (``commit``, ``claim``, ``range`` ...)."""
    kinds: Counter = Counter()
    call = store.call

    def counted(what, fn):
        result = call(what, fn)
        kinds[what.split(" ", 1)[0]] += 1
        return result

    store.call = counted
    return kinds
