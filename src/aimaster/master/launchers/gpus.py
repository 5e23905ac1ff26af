"""GPU slots on one machine: each local worker slot owns its own ``CUDA_VISIBLE_DEVICES``.

Two workers given the same GPU would share its memory and run each other out of it; a worker
relaunched on another slot's GPU would land on a busy device. So the devices are split once, before
the job starts, slot by slot (slot 0 gets the first G, slot 1 the next G, ...), and a relaunch in a
slot always gets that slot's devices back. The devices come from ``--gpus 0,1,...`` or, when that is
not given, from ``nvidia-smi -L``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Dict, List, Optional

from aimaster.errors import ConfigError

_GPU_LINE = re.compile(r"^GPU (\d+):")


def parse_gpus(text: str) -> List[str]:
    """``--gpus 0,1,2`` as a list of device ids (indices or ``GPU-...`` UUIDs), each once."""
    ids = [g.strip() for g in text.split(",")]
    if not ids or any(not g or not re.fullmatch(r"[0-9]+|(GPU|MIG)-[0-9A-Za-z-]+", g) for g in ids):
        raise ConfigError(f"--gpus {text!r}: expected a comma-separated list of GPU indices or UUIDs, e.g. 0,1,2,3")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {text!r} lists a GPU twice")
    return ids


def detected_gpus() -> Optional[List[str]]:
    """This machine's GPU indices from ``nvidia-smi -L`` (None: no nvidia-smi, or it failed)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [m.group(1) for m in map(_GPU_LINE.match, out.splitlines()) if m]


def slot_gpus(workers: int, per_worker: float, gpus: Optional[str]) -> Dict[int, str]:
    """Slot -> its ``CUDA_VISIBLE_DEVICES``; one line when more GPUs are asked than there are."""
    if per_worker != int(per_worker) or per_worker < 1:
        raise ConfigError(f"--gpus-per-worker {per_worker:g}: the local launcher gives whole GPUs (1, 2, ...)")
    g = int(per_worker)
    if gpus is not None:
        devices, where = parse_gpus(gpus), f"--gpus {gpus}"
    else:
        found = detected_gpus()
        if found is None:
            raise ConfigError("--gpus-per-worker needs --gpus 0,1,... here: nvidia-smi is not available")
        devices, where = found, "nvidia-smi -L"
    if workers * g > len(devices):
        raise ConfigError(f"--gpus-per-worker {g} for {workers} worker(s) needs {workers * g} GPUs; "
                          f"{where} lists {len(devices)}")
    return {slot: ",".join(devices[slot * g:(slot + 1) * g]) for slot in range(workers)}
