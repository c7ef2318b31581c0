"""How many threads torch computes on, and how they wait: one policy for every script.

torch's Linux wheels run their arithmetic on OpenMP's threads (libgomp), which by default spin
for a while at each barrier before they sleep. When other processes want the same cores, the
thread waited for is often descheduled, and the spinning ones burn the time it needs: a run
beside a few busy processes took many times as long as alone. Sleeping at once (a passive wait)
cures that but costs a quiet machine the wake-ups; a short spin keeps both (docs/speed.md). So
the scripts, and only they:

- before torch is imported (`prepare_process`, which the entry points call first): waiting
  threads spin a tenth of libgomp's default (GOMP_SPINCOUNT), then sleep, unless the
  environment already says how they wait; libgomp reads it once, as torch is imported;
- once the flags are read (`use_threads`): `--threads N` when given; else OMP_NUM_THREADS when
  the environment sets it; else one thread a core this process may use, fewer when other
  processes keep those cores busy. That is measured from /proc/stat over the time since
  `prepare_process`, mostly spent importing torch, so it costs no time of its own.

Importing lenetkit, or predicting from Python, sets none of this: a program that imports the
package keeps its own environment and torch's threads as it set them.
"""

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

# How OpenMP's threads wait: when the environment sets either, the policy leaves both alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Spins before a waiting thread sleeps: libgomp's default is 300,000.
SPIN_COUNT = "30000"
# A server's prediction is one small image, too small to gain from more threads: a thread each,
# the cores serving requests side by side (the server's workers, or its request threads).
SERVING_THREADS = 1
# More threads than any machine these scripts run on has cores: a larger count is a mistake.
MAX_THREADS = 1024
# Shorter than this, /proc/stat's clock ticks (1/100 s) say too little about the others' load.
MIN_SAMPLE_S = 0.2


@dataclass(frozen=True)
class CpuSample:
    """What /proc/stat and this process said at one moment: the busy seconds of `cpus`, by
    every process, and this process's own CPU seconds."""
    at: float
    busy: float
    own: float


_started: CpuSample | None = None  # prepare_process's sample, when an entry point took one


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity: taskset, a container's cpuset)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows: no affinity, every CPU
        return set(range(os.cpu_count() or 1))


def busy_seconds(stat: str, cpus: set[int]) -> float:
    """The seconds `cpus` spent busy since boot, from /proc/stat's text: every state but idle
    and iowait. Steal counts as busy: the hypervisor gave that time to another machine."""
    ticks = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def sample(cpus: set[int]) -> CpuSample | None:
    """The CPU time now, or None where there is no /proc/stat (not Linux)."""
    try:
        stat = Path("/proc/stat").read_text()
    except OSError:
        return None
    times = os.times()
    return CpuSample(time.monotonic(), busy_seconds(stat, cpus), times.user + times.system)


def others_load(start: CpuSample | None, end: CpuSample | None) -> float | None:
    """How many of the cores other processes kept busy between two samples, on average; None
    when the span is too short to tell."""
    if start is None or end is None or end.at - start.at < MIN_SAMPLE_S:
        return None
    others = (end.busy - start.busy) - (end.own - start.own)
    return max(0.0, others / (end.at - start.at))


def thread_count(cores: int, others: float | None) -> int:
    """The policy's threads: one a core, less the cores that other processes keep busy (at least
    one). A thread on a core that is taken only waits for its turn, and makes the others wait."""
    if others is None:
        return cores
    return max(1, min(cores, round(cores - others)))


def prepare_process(environ: MutableMapping[str, str] = os.environ) -> None:
    """What an entry point does first, before anything imports torch: the wait policy, unless
    the environment says how threads wait, and the start of the load's sample."""
    global _started
    if not any(name in environ for name in WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    _started = sample(usable_cpus())


def policy_threads() -> int:
    """The threads for work starting now: one a usable core, fewer when others keep them busy
    (as seen since prepare_process; without it, one a core)."""
    cpus = usable_cpus()
    return thread_count(len(cpus), others_load(_started, sample(cpus)))


def use_threads(requested: int | None = None, default: int | None = None,
                environ: MutableMapping[str, str] = os.environ) -> int:
    """Sets torch's threads for a script's work, and returns how many: `requested` (--threads),
    else the environment's OMP_NUM_THREADS as torch read it, else `default`, else the policy's."""
    import torch

    if requested is None and environ.get("OMP_NUM_THREADS", "").strip().isdigit() \
            and int(environ["OMP_NUM_THREADS"]) > 0:  # libgomp ignores any other value
        return torch.get_num_threads()
    # torch's own default is the physical cores: never more, where a core runs two threads
    count = requested or default or min(policy_threads(), torch.get_num_threads())
    torch.set_num_threads(count)
    return count
