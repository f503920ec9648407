"""The cores this process may use, and how busy they are: what llama.cpp's thread count and torch's are made from.

Two things the usual counts miss:
- A container's CPU quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`): a 2-vCPU Space can see every core of its
  host in `os.sched_getaffinity`, and threads beyond the quota wait for each other.
- Work in other processes: a `python -m studio train` beside the app keeps cores busy that this process's own CPU
  time doesn't show. Beside such a job (SmolLM2, torch's 2 threads, this 2-core box), llama.cpp decoded 36-45
  tokens/s on 1 thread and 4-16 on 2 (docs/performance.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")


def quota_cores(root: Path = CGROUP) -> int | None:
    """The cgroup's CPU quota in whole cores (rounded up, at least 1), or None when it sets none."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        if limit != "max" and int(period) > 0:
            return max(1, math.ceil(int(limit) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):  # v1
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    return None


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def cores(root: Path = CGROUP) -> int:
    """The cores this process may keep busy at once: its CPU affinity, capped by its cgroup's quota."""
    quota = quota_cores(root)
    return max(1, min(len(allowed_cpus()), quota or math.inf))


def cpu_times(cpus: set[int], stat: Path = PROC_STAT) -> tuple[float, float] | None:
    """(busy, total) jiffies of these CPUs so far, from /proc/stat, or None where it can't be read. Busy is
    everything but idle and iowait (steal counts: a hypervisor's other guest has the core)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    seen = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        fields = [float(x) for x in rest.split()[:8]]
        fields += [0.0] * (8 - len(fields))
        total += sum(fields)
        busy += sum(fields) - fields[3] - fields[4]
        seen += 1
    return (busy, total) if seen else None


class MachineLoad:
    """How many of this process's CPUs are busy (all processes), between two readings of /proc/stat. Only where
    no cgroup quota is set: under a quota the CPUs listed are the host's, shared with other tenants, and their
    load is not this container's to read; `busy()` then says None."""

    def __init__(self, stat: Path = PROC_STAT, root: Path = CGROUP):
        self.stat = stat
        self.cpus = allowed_cpus()
        self.enabled = quota_cores(root) is None
        self._last = cpu_times(self.cpus, stat) if self.enabled else None

    def busy(self) -> float | None:
        """Busy cores since the last call (0 .. the CPU count), or None where it can't be told."""
        if self._last is None:
            return None
        now = cpu_times(self.cpus, self.stat)
        if now is None:
            return None
        (b0, t0), (b1, t1) = self._last, now
        self._last = now
        if t1 <= t0:
            return None
        return len(self.cpus) * (b1 - b0) / (t1 - t0)


def cap_torch_threads() -> int:
    """torch's intra-op threads at most `cores()` (a quota below the visible cores: torch counts the host's),
    unless OMP_NUM_THREADS says otherwise. Returns torch's thread count."""
    import torch

    wanted = cores()
    if not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() > wanted:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()
