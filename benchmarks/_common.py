"""Shared by the speed benchmarks: the machine's description, interleaved timing, RESULTS.md sections."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# --cpu-time: every framework's compute on one thread (OpenMP/MKL for torch and Paddle, Eigen for XLA)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "n/a"


def machine(frameworks: dict[str, str]) -> str:
    """One paragraph: CPU, cores, Python, framework versions, date, load."""
    versions = "".join(f", {name} {version}" for name, version in frameworks.items())
    return (f"Machine: {cpu_model()}, {os.cpu_count()} CPU(s) ({platform.machine()}, {platform.system()}), "
            f"Python {platform.python_version()}{versions}. {time.strftime('%Y-%m-%d %H:%M')}; "
            f"load average (1/5/15 min) {load_average()} at the end of the run.")


def calibrate(fn: Callable[[], object], min_seconds: float) -> tuple[int, float]:
    """(calls per sample so that one sample lasts at least ``min_seconds``, seconds of one call)."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(min_seconds / once + 0.999)), once


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, budget: float = 0.0, warmup: int = 2,
                min_seconds: float = 0.2, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each variant, taken in rounds: each round times every variant once,
    so that a change of machine load hits every variant alike; the order rotates every round
    (A B C, B C A, C A B, ...) so that no variant always runs first or after the same neighbour.

    At least ``repeats`` rounds, more while they fit in ``budget`` seconds (cheap configurations
    get many rounds, where a single round is noisiest). Warm-up calls are not timed. ``clock``
    times the samples (``time.process_time``: CPU seconds of this process, which waiting for a
    core shared with other jobs does not add to)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    calls, round_seconds = {}, 0.0
    for name, fn in variants.items():
        calls[name], once = calibrate(fn, min_seconds)
        round_seconds += calls[name] * once
    rounds = max(repeats, int(budget / round_seconds))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = variants[name], calls[name]
            start = clock()
            for _ in range(n):
                fn()
            samples[name].append((clock() - start) / n)
    return samples


def paired_ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator/denominator, each ratio taken within one round (neighbours in time)."""
    return statistics.median(a / b for a, b in zip(samples[numerator], samples[denominator]))


def write_section(heading: str, text: str) -> None:
    """Replace the section starting at ``heading`` (a "## ..." line) in RESULTS.md, or append it;
    other sections are left as they are. Written atomically."""
    from resnet_multi.io_util import atomic_write_text

    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    atomic_write_text(RESULTS, new)


# --------------------------------------------------------------------------- memory (Linux: kernel high-water mark)


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The RSS high-water mark since the last reset (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def run_child(command: list[str], backend: str, to_rows: Callable[[dict], list[str]], env=None) -> tuple[list[str], dict]:
    """Run one backend's measurements in a child process (one framework per process): every JSON
    line it prints is a result, turned into table rows by ``to_rows`` and printed as it arrives.
    Returns (rows, framework versions); a failing child ends the benchmark with its stderr."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent, env=env)
    rows, versions = [], {}
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        result = json.loads(line)
        versions.update(result["versions"])
        new = to_rows(result)
        rows += new
        print("\n".join(new), flush=True)
    stderr = process.stderr.read()
    if process.wait() != 0:
        print(stderr, file=sys.stderr)
        raise SystemExit(f"the {backend} benchmark failed")
    return rows, versions
