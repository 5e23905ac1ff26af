"""Check a manifest against the official Kubernetes client's models, field by field.

Every key of a mapping must be a field of its model (the JSON names in ``attribute_map``), and its
value of the type ``openapi_types`` says, recursively: a typo (``backoffLimitPerIndx``), a field at
the wrong level or a string where a list belongs is reported with its path. The client's own
deserializer then builds the model, which also enforces the fields a model requires.
"""

from __future__ import annotations

import re
from typing import Any, List

from kubernetes import client

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict[(\[]([^,]+), (.+)[)\]]$")  # dict(str, X) or dict[str, X]
_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}

# Kind -> model of the object (apiVersion checked too).
MODELS = {("v1", "Secret"): "V1Secret", ("v1", "Service"): "V1Service",
          ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim", ("batch/v1", "Job"): "V1Job"}


def problems(value: Any, type_name: str, path: str = "") -> List[str]:
    """Every mismatch between ``value`` and the client's type ``type_name`` (empty: it fits)."""
    m = _LIST.match(type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name}), got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in problems(v, m.group(1), f"{path}[{i}]")]
    m = _DICT.match(type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({type_name}), got {type(value).__name__}"]
        return [p for k, v in value.items() for p in problems(v, m.group(2), f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    if type_name == "object":  # int-or-string and free-form fields
        return []
    if type_name == "datetime":
        return [] if isinstance(value, str) else [f"{path}: expected a timestamp string"]
    model = getattr(client.models, type_name, None)
    if model is None:
        return [f"{path}: the client has no model {type_name}"]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping, got {type(value).__name__}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    out = []
    for key, v in value.items():
        if key not in by_json:
            out.append(f"{path}.{key}: not a field of {type_name}")
        else:
            out += problems(v, model.openapi_types[by_json[key]], f"{path}.{key}")
    return out


def check_manifest(doc: dict) -> None:
    """AssertionError listing every problem of one object; else it deserializes into its model."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in MODELS, f"unexpected object {key}"
    found = problems(doc, MODELS[key], doc["kind"])
    assert not found, "\n".join(found)
    api = client.ApiClient()
    model = api._ApiClient__deserialize(doc, MODELS[key])  # raises on a missing required field
    assert type(model).__name__ == MODELS[key]
