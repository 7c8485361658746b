"""Conversion speed and memory: resnet152 between every pair of checkpoint formats.

Run:  python -m benchmarks.convert_bench [--runs 3] [--preset resnet152] [--workdir DIR]

For each (source, target) pair a fresh subprocess imports the backends it needs, then converts
``--runs`` times (median seconds and MB/s reported; MB = tensor payload / 1e6).

Memory: ``tracemalloc`` sees only allocations made through Python's allocator, not torch's or
Paddle's C++ buffers, so peak memory is the process's peak resident set size as the kernel
keeps it (a high-water mark: exact, nothing sampled). On Linux the child reads its RSS after
importing the frameworks (idle), resets the high-water mark (``/proc/self/clear_refs`` "5"),
converts once and reads ``VmHWM`` from ``/proc/self/status``: "peak extra" = peak - idle is
exactly what one conversion needed above the idle process. (``ru_maxrss`` is not used on Linux:
it also carries the parent's RSS across fork+exec and the import's own peak.) Linux only.
The target is peak extra < 3x the checkpoint size.

Results go to benchmarks/RESULTS.md under "## Conversion" (only that section is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "## Conversion"
from benchmarks._common import RESULTS, peak_rss_bytes, reset_peak_rss, rss_bytes, write_section


def child(src: str, dst_suffix: str, runs: int) -> None:
    """One pair, in its own process: import, measure idle RSS, convert ``runs`` times."""
    from resnet_multi.convert import NEUTRAL, convert, format_of_suffix
    from resnet_multi.registry import get_backend

    for fmt in {format_of_suffix(src), format_of_suffix("x" + dst_suffix)}:
        if fmt != NEUTRAL:
            get_backend(fmt)  # framework imports are not part of the conversion
    dst = Path(src).with_name(f"out_{Path(src).stem}{dst_suffix}")
    idle = rss_bytes()
    reset = reset_peak_rss()
    seconds = []
    peak = None
    for _ in range(runs):
        start = time.perf_counter()
        convert(src, dst, force=True, progress=False)
        seconds.append(time.perf_counter() - start)
        peak = peak_rss_bytes() if peak is None else peak  # the first conversion's high-water mark
    dst.unlink()
    print(json.dumps({"seconds": seconds, "idle_rss": idle, "peak_rss": peak, "exact_peak": reset}))


def _sources(workdir: Path, preset: str) -> tuple[dict[str, Path], int]:
    """One checkpoint of ``preset`` per format, and the tensor payload in bytes."""
    import resnet_multi as rm
    from resnet_multi.convert import formats, write_canonical
    from resnet_multi.weights import random_weights

    spec = rm.get_spec(preset)
    weights = random_weights(rm.make_plan(spec), seed=0)
    suffix_of: dict[str, str] = {}
    for suffix, fmt in formats().items():
        suffix_of.setdefault(fmt, suffix)
    paths = {}
    for fmt, suffix in suffix_of.items():
        path = workdir / f"{preset}_{fmt}{suffix}"
        write_canonical(path, weights, spec, force=True)
        paths[fmt] = path
    return paths, sum(a.nbytes for a in weights.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="conversions per pair (median reported)")
    parser.add_argument("--preset", default="resnet152")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not update RESULTS.md")
    parser.add_argument("--child", nargs=3, metavar=("SRC", "DST_SUFFIX", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        paths, payload = _sources(Path(tmp), args.preset)
        size_mb = payload / 1e6
        rows = []
        for src_fmt, src in paths.items():
            for dst_fmt, dst_example in paths.items():
                out = subprocess.run([sys.executable, "-m", "benchmarks.convert_bench", "--child", str(src),
                                      dst_example.suffix, str(args.runs)],
                                     capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    raise SystemExit(f"{src_fmt} -> {dst_fmt} failed")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                median = statistics.median(result["seconds"])
                extra = (result["peak_rss"] - result["idle_rss"]) / 1e6
                row = (src_fmt, dst_fmt, median, size_mb / median, result["idle_rss"] / 1e6,
                       result["peak_rss"] / 1e6, extra, extra / size_mb)
                rows.append(row)
                print(f"{src_fmt:>8} -> {dst_fmt:<8} {median:6.2f} s  {row[3]:7.1f} MB/s  "
                      f"peak extra {extra:7.1f} MB ({row[7]:.2f}x)", flush=True)

    table = [
        SECTION,
        "",
        f"`python -m benchmarks.convert_bench --runs {args.runs}`: {args.preset}, {size_mb:.1f} MB of float32 tensors, "
        f"every source -> target format; median of {args.runs} conversions in one fresh process per pair "
        "(read, spec inferred or read from the file, checked, written atomically). "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{time.strftime('%Y-%m-%d')}. Machine shared with other jobs: seconds are noisy.",
        "",
        "Peak extra = the first conversion's peak RSS (kernel high-water mark `VmHWM`, reset after the imports; "
        "tracemalloc cannot see torch/Paddle buffers) minus the idle RSS after importing the frameworks. "
        "Target: < 3x the checkpoint.",
        "",
        "| source | target | seconds | MB/s | idle RSS MB | peak RSS MB | peak extra MB | extra / checkpoint |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for src_fmt, dst_fmt, median, rate, idle, peak, extra, ratio in rows:
        flag = "" if ratio < 3 else " (over target)"
        table.append(f"| {src_fmt} | {dst_fmt} | {median:.2f} | {rate:.0f} | {idle:.0f} | {peak:.0f} | {extra:.0f} | "
                     f"{ratio:.2f}x{flag} |")
    text = "\n".join(table) + "\n"
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the {SECTION!r} section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
