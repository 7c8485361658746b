"""build() time and peak memory per backend, and the time of ``import resnet_multi``.

Run:  python -m benchmarks.build_bench [--models resnet50,resnet152] [--runs 3] [--no-write]

build: for every backend and model, one fresh process imports the framework and the backend
(not timed), then times ``rm.build(spec, backend)`` (seed initialisation, as a user calls it)
``--runs`` times, and ``rm.build(..., inference=True)`` likewise, and the framework's own
constructor of the same network for comparison (torchvision / paddle.vision / the plain nnx
ResNet of benchmarks/_native.py; each initialises randomly). Medians reported.

Memory: the first build's peak resident set size above the idle process (kernel high-water mark
VmHWM, reset after the imports; tracemalloc cannot see the frameworks' C++ buffers), in one
process per (backend, model, kind), beside the model's parameter bytes.

Import: ``import resnet_multi`` in a fresh interpreter, timed inside it (interpreter start-up
excluded), median of ``--runs`` x 5 processes after one untimed process that writes the bytecode
cache (PYTHONDONTWRITEBYTECODE is dropped for these children: an installed package has its
bytecode, so timing the compiler would not be a user's import). Lists the frameworks it imported
(target: none, < 0.1 s) and whether numpy was executed (it should not be: the core loads numpy on
first use). ``--backends ""`` measures the import alone.

Results go to benchmarks/RESULTS.md under "## Build time and memory" and "## Import time".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import _common

BUILD_SECTION = "## Build time and memory"
IMPORT_SECTION = "## Import time"
BACKENDS = ("torch", "paddle", "flax")
ROOT = Path(__file__).resolve().parent.parent


def _native_builder(backend: str, name: str):
    from . import _native

    if backend == "torch":
        return lambda: _native.torch_model(name)
    if backend == "paddle":
        return lambda: _native.paddle_model(name)
    return lambda: _native.flax_model(name)


def child(backend: str, name: str, kind: str, runs: int) -> None:
    import resnet_multi as rm
    from resnet_multi.registry import get_backend

    get_backend(backend)  # the framework import is not part of build()
    spec = rm.get_spec(name)
    if kind == "native":
        make = _native_builder(backend, name)
        if name not in ("resnet18", "resnet50", "resnet45"):
            print(json.dumps({"skipped": True}))
            return
    else:
        make = lambda: rm.build(spec, backend, inference=kind == "inference")  # noqa: E731
    idle = _common.rss_bytes()
    exact = _common.reset_peak_rss()
    seconds = []
    for i in range(runs):
        start = time.perf_counter()
        model = make()
        seconds.append(time.perf_counter() - start)
        if i == 0:
            peak = _common.peak_rss_bytes() if exact else None
        del model
    params = sum(math.prod(info.shape) for info in rm.make_plan(spec).params.values())
    print(json.dumps({"seconds": seconds, "idle": idle, "peak": peak, "param_bytes": 4 * params}))


def import_child() -> None:
    """Time ``import resnet_multi``; report the frameworks it imported and whether numpy ran."""
    start = time.perf_counter()
    import resnet_multi  # noqa: F401

    seconds = time.perf_counter() - start
    loaded = [m for m in ("torch", "paddle", "jax", "flax", "tensorflow") if m in sys.modules]
    # a lazily loaded numpy sits in sys.modules unexecuted; its submodules appear once it runs
    numpy_ran = any(name.startswith("numpy.") for name in sys.modules)
    print(json.dumps({"seconds": seconds, "frameworks": loaded, "numpy": numpy_ran}))


def _run(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.build_bench", *args], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"benchmark child {args} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "paddlepaddle", "jax", "flax"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,resnet152")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--runs", type=int, default=3, help="builds per process (median reported)")
    parser.add_argument("--no-write", action="store_true", help="print the tables, do not update RESULTS.md")
    parser.add_argument("--child", nargs=4, metavar=("BACKEND", "MODEL", "KIND", "RUNS"), help=argparse.SUPPRESS)
    parser.add_argument("--import-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.import_child:
        import_child()
        return 0
    if args.child:
        backend, name, kind, runs = args.child
        child(backend, name, kind, int(runs))
        return 0

    # import time first, while nothing of ours is running
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    _run(["--import-child"], env)  # writes the bytecode cache
    imports = [_run(["--import-child"], env) for _ in range(5 * args.runs)]
    import_seconds = statistics.median(r["seconds"] for r in imports)
    frameworks = sorted({f for r in imports for f in r["frameworks"]})
    numpy_ran = any(r["numpy"] for r in imports)
    verdict = "meets" if import_seconds < 0.1 else "misses"
    import_text = "\n".join([
        IMPORT_SECTION, "",
        f"`python -m benchmarks.build_bench --runs {args.runs}`: `import resnet_multi` in a fresh interpreter "
        f"with its bytecode cached, timed inside it (start-up excluded), median of {len(imports)} processes: "
        f"**{import_seconds * 1e3:.0f} ms** ({verdict} the 100 ms target; min "
        f"{min(r['seconds'] for r in imports) * 1e3:.0f}, max {max(r['seconds'] for r in imports) * 1e3:.0f} ms); "
        f"frameworks imported: {', '.join(frameworks) if frameworks else 'none'}; numpy executed: "
        f"{'yes' if numpy_ran else 'no (loaded on first use)'}. {_common.machine({})}",
        "",
    ])
    print(import_text)
    if not args.no_write:
        _common.write_section(IMPORT_SECTION, import_text)
        print(f"wrote {IMPORT_SECTION!r} in {_common.RESULTS}")

    rows = []
    for backend in [b for b in args.backends.split(",") if b]:
        for name in [m for m in args.models.split(",") if m]:
            results = {kind: _run(["--child", backend, name, kind, str(args.runs)])
                       for kind in ("build", "inference", "native")}
            cells = []
            for kind in ("build", "inference", "native"):
                r = results[kind]
                if r.get("skipped"):
                    cells += ["", ""]
                    continue
                extra = (r["peak"] - r["idle"]) / 1e6 if r["peak"] is not None else float("nan")
                cells += [f"{statistics.median(r['seconds']):.2f}", f"{extra:.0f}"]
            params_mb = results["build"]["param_bytes"] / 1e6
            row = f"| {backend} | {name} | {params_mb:.0f} | " + " | ".join(cells) + " |"
            rows.append(row)
            print(row, flush=True)

    build_text = "\n".join([
        BUILD_SECTION, "",
        f"`python -m benchmarks.build_bench --models {args.models} --runs {args.runs}`: seconds = median of "
        f"{args.runs} calls in one process after the framework is imported; peak MB = the first call's peak "
        "RSS above the idle process (kernel VmHWM). build = `rm.build(spec, backend)` (seed init from the "
        "spec, identical in every backend); inference = `rm.build(..., inference=True)` (init, fold, build, "
        "optimize); native = the framework's own constructor (random init; resnet18/50/45 only).",
        "",
        _common.machine(_versions()),
        "",
        "| backend | model | params MB | build s | build peak MB | inference s | inference peak MB | native s "
        "| native peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])
    if not rows:  # --backends "": the import alone
        return 0
    print()
    print(build_text)
    if not args.no_write:
        _common.write_section(BUILD_SECTION, build_text)
        print(f"wrote {BUILD_SECTION!r} in {_common.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
