"""studio.machine: the cores llama.cpp and torch are given (affinity capped by a container's CPU quota) and the
load of other processes on them (/proc/stat), read from fake cgroup and /proc files, then from the real ones."""

import subprocess
import sys
import time

from studio.machine import MachineLoad, allowed_cpus, cores, cpu_times, quota_cores


def test_a_containers_cpu_quota_caps_the_cores(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert quota_cores(v2) is None and cores(v2) == len(allowed_cpus())  # no cgroup files: the affinity
    for text, want in (("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000\n", 2),
                       ("50000 100000\n", 1)):
        (v2 / "cpu.max").write_text(text)
        assert quota_cores(v2) == want, text
    (v2 / "cpu.max").write_text("100000 100000\n")
    assert cores(v2) == 1  # a 1-CPU quota on a host whose every core is in the affinity
    (v2 / "cpu.max").write_text("garbage")
    assert quota_cores(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    for quota, want in (("-1\n", None), ("300000\n", 3)):
        (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text(quota)
        assert quota_cores(v1) == want, quota


def _stat(path, busy_per_cpu: dict, idle_per_cpu: dict):
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]  # the all-CPU line is not read: the host's, not ours
    for cpu in sorted(busy_per_cpu):
        b, i = busy_per_cpu[cpu], idle_per_cpu[cpu]
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{cpu} {b // 2} 0 {b - b // 2} {i} 0 0 0 0 0 0")
    lines.append(f"cpu{max(busy_per_cpu) + 1000} 999999 0 0 0 0 0 0 0 0 0")  # a CPU outside the affinity
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_machine_load_counts_busy_cores_on_our_cpus_only(tmp_path):
    cpus = sorted(allowed_cpus())
    stat = tmp_path / "stat"
    _stat(stat, {c: 1000 for c in cpus}, {c: 1000 for c in cpus})
    assert cpu_times(set(cpus), stat) == (1000.0 * len(cpus), 2000.0 * len(cpus))
    load = MachineLoad(stat, root=tmp_path)  # no cgroup files: no quota, the per-CPU lines are ours
    # then the first CPU works the whole window and the others idle
    _stat(stat, {c: 1000 + (100 if c == cpus[0] else 0) for c in cpus},
          {c: 1000 + (0 if c == cpus[0] else 100) for c in cpus})
    assert abs(load.busy() - 1.0) < 1e-9
    _stat(stat, {c: 1000 + (150 if c == cpus[0] else 0) for c in cpus},  # half of one core: 50 busy, 50 idle
          {c: 1000 + (50 if c == cpus[0] else 200) for c in cpus})  # the others: 100 idle more
    assert abs(load.busy() - 0.5) < 1e-9
    assert load.busy() is None  # nothing elapsed
    quota = tmp_path / "quota"
    quota.mkdir()
    (quota / "cpu.max").write_text("100000 100000\n")
    assert MachineLoad(stat, root=quota).busy() is None  # under a quota the per-CPU lines are the host's


def test_another_process_spinning_shows_in_the_real_proc_stat():
    load = MachineLoad()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        load.busy()  # from here on the spinner runs the whole window
        time.sleep(1.5)
        seen = load.busy()
    finally:
        spin.kill()
        spin.wait()
    assert seen is not None and seen >= 0.6, seen  # loose: a loaded machine only adds to it


def test_torch_threads_are_capped_at_the_quota_unless_omp_num_threads_says(monkeypatch):
    import torch

    import studio.machine as machine

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(machine, "cores", lambda: 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        assert machine.cap_torch_threads() == 4  # the user's word stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert machine.cap_torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(machine, "cores", lambda: 8)
        assert machine.cap_torch_threads() == 1  # never raised: only capped
    finally:
        torch.set_num_threads(before)
