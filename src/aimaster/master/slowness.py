"""Slow-worker detection: which of our workers is so much slower than its peers that it should go.

Dynamic dispatch already keeps a slow worker from holding much work, and speculative copies cut
the tail it leaves at the end; but a worker running at a tenth of its peers' speed is a tenth of a
worker for the whole job. When the cause is the machine or the process (a throttled GPU, a noisy
neighbour, a degraded disk), a fresh worker does better: the master launches a replacement and
retires the slow one once the replacement runs (its held slices go back to the pool).

The statistics are robust on purpose -- one slow slice must not condemn a worker:

* a worker's pace is the median of its recent slice durations; only while it has fewer than
  ``min_own`` of them (a new worker, slow from its first slice) does the age of its oldest in-flight
  slice count too. One long slice of an established worker -- it was retrying through an etcd
  restart, it met one huge input -- never condemns it: speculation and hang detection deal with that;
* it is compared with the median of its *peers'* recent durations, pooled, and only once they have
  at least ``min_samples`` of them;
* it is slow when its pace exceeds ``multiplier`` times that median *and* the median by at least
  ``min_gap`` seconds (ratios of tiny durations are noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from aimaster.data.speculation import median


@dataclass
class SlowWorkerPolicy:
    multiplier: float = 3.0  # 0 disables replacement
    min_samples: int = 5
    min_gap: float = 1.0
    min_own: int = 3

    @property
    def enabled(self) -> bool:
        return self.multiplier > 0

    def pace(self, own: List[float], oldest_inflight: float) -> float:
        if len(own) >= self.min_own:
            return median(own) or 0.0
        return max(median(own) or 0.0, oldest_inflight)

    def find(self, candidates: Iterable[str], durations: Dict[str, List[float]],
             inflight: Dict[str, float]) -> List[Tuple[str, float, float]]:
        """(worker, its pace, peers' median) for each slow candidate, slowest first."""
        if not self.enabled:
            return []
        out = []
        for wid in candidates:
            peers = [d for other, ds in durations.items() if other != wid for d in ds]
            if len(peers) < self.min_samples:
                continue
            typical: Optional[float] = median(peers)
            if typical is None:
                continue
            pace = self.pace(durations.get(wid, []), inflight.get(wid, 0.0))
            if pace > self.multiplier * typical and pace - typical >= self.min_gap:
                out.append((wid, pace, typical))
        out.sort(key=lambda x: -x[1] / max(x[2], 1e-9))
        return out
