"""How the benchmarks time a call: the one helper every script here uses."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def interleaved(fns: dict[str, Callable], repeats: int,
                quiet_s: float = 0.0) -> dict[str, tuple[float, float]]:
    """{name: (first call s, median of `repeats` later calls s)}. The calls alternate between the
    functions, so a slow phase of a shared machine hits each alike; each output is blocked on
    (jax arrays; other outputs are taken as ready). `quiet_s`: a pause before each call (a torch
    call leaves spinning worker threads that slow whatever runs right after it)."""
    def once(fn) -> float:
        time.sleep(quiet_s)
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    first = {name: once(fn) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return {name: (first[name], statistics.median(times[name])) for name in fns}


def timed(fn: Callable, repeats: int) -> tuple[float, float]:
    """(compile s: the first call's excess over the median, median of `repeats` later calls s)."""
    first, median = interleaved({"": fn}, repeats)[""]
    return max(first - median, 0.0), median


def medians(fns: list[Callable], repeats: int) -> list[float]:
    """The medians of `interleaved`, in the order of `fns`."""
    return [m for _, m in interleaved(dict(enumerate(fns)), repeats).values()]
