"""What a file dataset's plan records about its input, so that a later run can tell if it changed.

The plan's ``source`` holds, besides ``base`` (the directory names are relative to):

* ``input``: the fingerprint of the planned list, ``{"n": count, "sha256": hash of the names in plan
  order}``. It costs one pass over names the planner has in hand anyway, and lets a resumed run
  compare its own listing in O(1) memory (see :mod:`aimaster.io.input_check`).
* ``listing``: how the list was made (input directory, meta file, ``skip_unreadable``), so that any
  process -- the master, too -- can list the input again from the plan alone (:func:`relist`).
* ``skipped``: with ``skip_unreadable``, how many entries were left out and a few of them, so the
  skip is on record, not only in one worker's log.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from aimaster.errors import EtcdDataError
from aimaster.io import files, listing


def fingerprint(names: Iterable[str]) -> Dict[str, Any]:
    """Count and SHA-256 of a file list, in its order (names are NUL-separated: no name holds one)."""
    h = hashlib.sha256()
    n = 0
    for name in names:
        h.update(name.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        n += 1
    return {"n": n, "sha256": h.hexdigest()}


def listed_name_ok(name: str) -> bool:
    """Whether ``name`` is one a directory listing can produce: relative, inside the directory, not
    hidden. A name read back from etcd that is not would make workers read a file outside the input
    (``../../etc/shadow``) and write what they make of it into the job's output."""
    return isinstance(name, str) and bool(name) and not name.startswith("/") and "://" not in name \
        and "\0" not in name and all(part and not part.startswith(".") for part in name.split("/"))


def plan_files(input_dir: str, meta_path: str, skip_unreadable: bool) -> Tuple[List[str], Dict[str, Any]]:
    """List a file dataset's input: (names, the plan's ``source``)."""
    skipped: List[Tuple[str, str]] = []
    if meta_path:
        base, names = files.read_meta_file(meta_path, input_dir)
    else:
        base, found = files.list_inputs(input_dir, skip_unreadable)
        names, skipped = found.names, found.skipped
    source: Dict[str, Any] = {
        "base": base,
        "input": fingerprint(names),
        "listing": {"input_dir": input_dir or "", "meta": meta_path or "", "skip_unreadable": bool(skip_unreadable)},
    }
    if skipped:
        source["skipped"] = {"n": len(skipped), "examples": [f"{listing.shown(rel)} ({why})"
                                                             for rel, why in skipped[:listing.EXAMPLES]]}
    return names, source


def planned_fingerprint(source: Mapping[str, Any], where: str) -> Optional[Dict[str, Any]]:
    """The fingerprint a plan's source holds (None for plans made before there was one)."""
    fp = source.get("input")
    if fp is None:
        return None
    if not (isinstance(fp, dict) and isinstance(fp.get("n"), int) and not isinstance(fp.get("n"), bool)
            and fp["n"] >= 0 and isinstance(fp.get("sha256"), str) and len(fp["sha256"]) == 64):
        raise EtcdDataError(f"value at {where} has a bad input fingerprint: {fp!r:.120}")
    return {"n": fp["n"], "sha256": fp["sha256"]}


def relist(source: Mapping[str, Any], where: str) -> List[str]:
    """List the input of a plan again, the way its planner did, from the plan's ``source`` alone."""
    how = source.get("listing")
    if not (isinstance(how, dict) and isinstance(how.get("input_dir"), str) and isinstance(how.get("meta"), str)
            and isinstance(how.get("skip_unreadable"), bool) and (how["input_dir"] or how["meta"])):
        raise EtcdDataError(f"value at {where} does not say how its input was listed: {how!r:.200}")
    return plan_files(how["input_dir"], how["meta"], how["skip_unreadable"])[0]


def slice_inputs(dataset, index: int) -> Tuple[List[str], Optional[str]]:
    """The input paths of slice ``index`` of a file dataset, and why they cannot be handed out.

    One check for every reader (``get_next_slice`` and the PyTorch/TensorFlow datasets): a name in
    the file list that no listing of the input produces is forged (:class:`EtcdDataError`); a local
    input that is no longer a regular file (deleted, or a FIFO that would block ``open()`` forever)
    is a problem of that slice only, returned so that the caller gives the slice back with it.
    """
    source = dataset.plan["source"]
    base = source.get("base")
    names = dataset.items(index)
    how = source.get("listing")
    if isinstance(how, dict) and not how.get("meta"):  # listed from a directory: names are inside it
        forged = next((n for n in names if not listed_name_ok(n)), None)
        if forged is not None:
            raise EtcdDataError(f"the file list of dataset {dataset.ds_id} (slice {dataset.slice_id(index)}) "
                                f"holds {forged!r:.200}, which no listing of {base} produces")
    paths = [files.join(base, n) for n in names]
    local = [p for p in paths if not files.is_url(p)]
    return paths, next((e for e in map(listing.input_problem, local) if e is not None), None)
