"""Which CPUs the inference server's engine process runs on, and which its front end
(`--engine-cpus`): on a machine shared with other work, a decode loop that any thread
can preempt loses a share of its core and of its caches at every switch.

Measured with bench/serving.py on 2 cores (the bench's client on the same machine): at
concurrency 32 the unbound engine thread was preempted about 3,000 times a second and
ran 77 % of the wall time; bound to a core of its own, with the gRPC front end and the
client on the other, it ran 93 % and the server gave about 30 % more tokens/s.
vLLM's CPU backend binds its engine the same way (VLLM_CPU_OMP_THREADS_BIND, with
cores reserved for the rest: VLLM_CPU_NUM_OF_RESERVED_CPU).

- `none` (the default): no binding; the kernel places every thread.
- `auto`: the engine gets the last `--threads` of the CPUs the server may use, the front
  end the others; off, with one log line, where that leaves the front end none.
- a list (`3`, `2-3`, `0,4-7`): the engine on those CPUs, the front end on the rest.

Several servers on one node would each take the same CPUs with `auto`; give them lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NONE = "none"
AUTO = "auto"


class BindingError(ValueError):
    """A --engine-cpus value that cannot be applied; the message names the fix."""


@dataclass(frozen=True)
class Binding:
    engine: frozenset[int]
    front: frozenset[int]


def parse_cpus(text: str) -> frozenset[int]:
    """`0,2-3` as {0, 2, 3}; BindingError for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise BindingError(
                f"--engine-cpus {text!r}: expected none, auto or CPUs such as 3, 2-3 or 0,4-7"
            )
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise BindingError(f"--engine-cpus {text!r}: {part.strip()} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    """{0, 2, 3} as `0,2-3`."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def plan_binding(spec: str, allowed: frozenset[int], threads: int) -> Binding | None:
    """The CPUs of each side for `spec`, among the `allowed` ones; None for no binding
    (`none`, or `auto` where the front end would be left no CPU). BindingError for a list
    that names a CPU not allowed here or leaves the front end none."""
    spec = spec.strip().lower()
    if spec == NONE:
        return None
    if spec == AUTO:
        if len(allowed) <= threads:
            return None
        engine = frozenset(sorted(allowed)[-threads:])
        return Binding(engine, allowed - engine)
    engine = parse_cpus(spec)
    missing = engine - allowed
    if missing:
        raise BindingError(
            f"--engine-cpus {spec}: CPU {format_cpus(frozenset(missing))} is not one this "
            f"server may use ({format_cpus(allowed)})"
        )
    if engine >= allowed:
        raise BindingError(
            f"--engine-cpus {spec}: leaves no CPU for the front end (this server may use "
            f"{format_cpus(allowed)}); name fewer"
        )
    return Binding(engine, allowed - engine)


def allowed_cpus() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def bind_process(cpus: frozenset[int]) -> None:
    """Every thread of this process on `cpus` (sched_setaffinity binds one thread; threads
    started later inherit it from the one that starts them)."""
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, ValueError):  # a thread that has just ended
            continue
