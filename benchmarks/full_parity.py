"""Full-size parity of the presets the test suite checks only plan-level and at reduced width.

Run:  python -m benchmarks.full_parity [--presets hornet_small_gf,convnext_small,...] [--backends torch,paddle,flax]
                                       [--dtypes float32,float64] [--input 2x97x75] [--timeout 1800]
                                       [--max-rss-gb 6] [--no-write]

The test suite builds VGG, ConvNeXt and HorNet in every backend by their smallest members only
(tests/conftest.py ``BUILT_PRESETS``); the others (50-200 M parameters) are checked plan-level
(names, order, parameter counts, summary, spec inference) and at reduced width against the oracle
(tests/test_modern_families.py). This script checks those others at full size, through the public
API alone: ``rm.check_parity(preset, backends=(backend,), input_shape=..., dtype=...)`` against the
float64 numpy oracle, every tap, with the default bound (float32: ``max|out - ref| <= 1e-6 + 1e-5 *
max|ref|``; float64: its own, tighter bound) and the default weights (random, seed 0: BN statistics,
layer scales and the filter's complex weight away from their inits).

The default input is 2 x 3 x 97 x 75: odd and non-square, so the stride-2 layers see odd and even
sizes; for ConvNeXt and HorNet the maps are 24x18, 12x9, 6x4 and 3x2, so the global filter's
weights, (14, 8) and (7, 4), are resized (align_corners bilinear) to the spectra (6, 3) and (3, 2);
VGG's adaptive pool maps 3x2 to 7x7 (overlapping windows).

Each (preset, backend) runs in a fresh process (memory goes back when it ends), both dtypes in
turn (Flax's float64 switches JAX's 64-bit mode on after the float32 check). The parent watches the
child's resident memory and ends it above ``--max-rss-gb`` (the machine is shared); a child that
exceeds ``--timeout`` seconds is ended too. Either is recorded as such in the table, and a preset
not reached is listed as not run. Peak RSS is the process's kernel high-water mark (VmHWM) over
that dtype's check, reset before it: the framework, the model, the canonical weights and the
oracle's float64 copies together.

The table goes to benchmarks/RESULTS.md under "## Full-size parity" (the default preset list) or
"## Full-size parity (presets)" for another list, rewritten after every preset so that a long run
that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import _common

SECTION = "## Full-size parity"
# the presets the suite builds only plan-level and at reduced width; the likeliest to differ first
PRESETS = ("hornet_small_gf", "convnext_small", "vgg16_bn",
           "hornet_small_7x7", "hornet_base_gf", "hornet_base_7x7", "convnext_base", "convnext_large",
           "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg19", "vgg19_bn")
BACKENDS = ("torch", "paddle", "flax")
DTYPES = ("float32", "float64")
ROOT = Path(__file__).resolve().parent.parent
FLAX_FLOAT64_NOTE = (
    "Flax float64 and memory: XLA:CPU computes a float64 depthwise convolution (`feature_group_count` = channels) "
    "with its kernel expanded to a dense block-diagonal one, C x C x k x k values: one 7x7 conv of 1024 channels "
    "took 396 MB above the process and one of 1984 channels (hornet_base's last stage) 1471 MB, the size of C^2 x "
    "49 float64 values (392 and 1472 MB), where float32 takes no such memory (jax 0.10.2, measured alone). "
    "ConvNeXt's and HorNet-7x7's wide stages therefore need more than a 6 GB limit in Flax float64; the gf presets "
    "have the filter, not the 7x7 conv, in stages 3 and 4. With `--max-rss-gb 20` all four pass (section "
    "\"Full-size parity (hornet_small_7x7,convnext_base,hornet_base_7x7,convnext_large)\": peaks 6.3 to 13.6 GB).")
ODD_INPUT_NOTE = ("At 97x75 ConvNeXt's and HorNet's maps are 24x18, 12x9, 6x4 and 3x2, so the global filter's "
                  "weights (14x8, 7x4) are resized to the spectra (6x3, 3x2); VGG's adaptive pool maps 3x2 to 7x7. ")


# --------------------------------------------------------------------------- child: one preset, one backend


def child(preset: str, backend: str, dtypes: list[str], shape: tuple[int, ...]) -> None:
    import resnet_multi as rm

    for dtype in dtypes:
        if backend == "flax" and dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)  # rm.build refuses float64 Flax without it
        _common.reset_peak_rss()
        start = time.perf_counter()
        report = rm.check_parity(preset, backends=(backend,), input_shape=shape, dtype=dtype)
        seconds = time.perf_counter() - start
        data = report.to_dict()
        results = [r for r in data["results"] if r["backend"] == backend]
        output = results[-1]  # execution order: the last tap is the model's output
        summary = data["summary"][backend]
        print(json.dumps({
            "preset": preset, "backend": backend, "dtype": dtype, "ok": data["ok"],
            "taps": summary["taps"], "passed": summary["passed"], "worst_rel": summary["worst_rel"],
            "worst_tap": summary["worst_tap"], "max_abs": max(r["max_abs"] for r in results),
            "output_tap": output["tap"], "output_abs": output["max_abs"], "output_rel": output["rel"],
            "rtol": data["rtol"], "atol": data["atol"], "first_divergence": data["first_divergence"],
            "seconds": seconds, "peak_rss": _common.peak_rss_bytes(), "versions": _versions(backend),
            "finished": time.strftime("%H:%M"), "load": os.getloadavg()[0],
        }), flush=True)


def _versions(backend: str) -> dict[str, str]:
    if backend == "torch":
        import torch

        return {"torch": torch.__version__}
    if backend == "paddle":
        import paddle

        return {"paddle": paddle.__version__}
    import flax
    import jax

    return {"jax": jax.__version__, "flax": flax.__version__}


# --------------------------------------------------------------------------- parent


def _rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_pair(preset: str, backend: str, args) -> tuple[list[dict], str]:
    """The child's results (one per dtype it finished) and "" or why it stopped early."""
    command = [sys.executable, "-m", "benchmarks.full_parity", "--child", f"{preset}:{backend}",
               "--dtypes", ",".join(args.dtypes), "--input", args.input]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    limit, stopped, peak = args.max_rss_gb * 2 ** 30, [], [0]

    def watch():  # the machine is shared: end the child before it takes more than its share
        start = time.monotonic()
        while process.poll() is None:
            rss = _rss(process.pid)
            peak[0] = max(peak[0], rss)
            if rss > limit:
                stopped.append(f"ended at {rss / 2 ** 30:.1f} GB resident (limit {args.max_rss_gb:g} GB)")
            elif time.monotonic() - start > args.timeout:
                stopped.append(f"ended after {args.timeout:g} s (timeout)")
            if stopped:
                process.kill()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    results = [json.loads(line) for line in process.stdout if line.startswith("{")]
    code = process.wait()
    watcher.join()
    reader.join()
    if stopped:
        return results, stopped[0]
    if code != 0:
        last = next((line.strip() for line in reversed(stderr) if line.strip()), "")
        return results, f"exit code {code}: {last[:200]}"
    return results, ""


def _row(r: dict) -> str:
    result = "ok" if r["ok"] else f"FAIL ({r['passed']}/{r['taps']} taps)"
    return (f"| {r['preset']} | {r['backend']} | {r['dtype']} | {r['passed']}/{r['taps']} | {r['worst_rel']:.2e} "
            f"| {r['worst_tap']} | {r['max_abs']:.1e} | {r['output_abs']:.1e} | {result} | {r['seconds']:.0f} "
            f"| {r['peak_rss'] / 2 ** 20:.0f} | {r['finished']} | {r['load']:.1f} |")


def _heading(presets: list[str]) -> str:
    return SECTION + ("" if tuple(presets) == PRESETS else f" ({','.join(presets)})")


def _summary(results: list[dict]) -> str:
    """One line: how many checks ran and passed, and the worst relative error per dtype."""
    if not results:
        return ""
    passed = sum(r["ok"] for r in results)
    worst = []
    for dtype in dict.fromkeys(r["dtype"] for r in results):
        top = max((r for r in results if r["dtype"] == dtype), key=lambda r: r["worst_rel"])
        worst.append(f"{dtype} {top['worst_rel']:.1e} ({top['preset']}, {top['backend']}, {top['worst_tap']})")
    return f"{passed} of {len(results)} checks pass; the worst relative error: " + "; ".join(worst) + "."


def _section(args, rows: list[str], stopped: list[str], reached: list[str], versions: dict, started: str,
             bounds: dict, results: list[dict]) -> str:
    not_run = [p for p in args.presets if p not in reached]
    bound_text = "; ".join(f"{dtype}: max|out - ref| <= {atol:g} + {rtol:g} * max|ref|"
                           for dtype, (rtol, atol) in bounds.items())
    command = (f"python -m benchmarks.full_parity --presets {','.join(args.presets)} --backends "
               f"{','.join(args.backends)} --dtypes {','.join(args.dtypes)} --input {args.input} "
               f"--timeout {args.timeout:g} --max-rss-gb {args.max_rss_gb:g}")
    lines = [
        _heading(args.presets),
        "",
        f"`{command}`: `rm.check_parity(preset, backends=(backend,), input_shape={tuple(args.shape)}, dtype=...)` "
        "at full size, one fresh process per preset and backend, against the float64 numpy oracle, every tap, "
        f"with check_parity's default bound per tap ({bound_text}) and default weights (random, seed 0). "
        + (ODD_INPUT_NOTE if tuple(args.shape[2:]) == (97, 75) else "")
        + "\"worst rel\" = the largest max|out - ref| / max|ref| over the taps, at "
        "\"tap\"; \"max abs\" = the largest max|out - ref| of any tap; \"output abs\" = that of the logits. "
        "Seconds = the check (oracle included: it runs once per check); peak RSS = the process's high-water "
        "mark over that check (framework, model, weights and the oracle's float64 copies). \"done\" and "
        "\"load\" = time of day and 1-minute load average when the check ended.",
        "",
        f"Started {started}. " + _common.machine(versions)
        + " The machine is shared with other jobs: seconds are noisy.",
        "",
        "| preset | backend | dtype | taps passed | worst rel | tap | max abs | output abs | result | s | peak RSS MB "
        "| done | load |",
        "|---|---|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|",
        *rows,
        "",
        _summary(results),
        "",
    ]
    if stopped:
        lines += ["Did not finish: " + "; ".join(stopped) + ".", ""]
        if any(" flax (" in s and "float64" in s and "resident" in s for s in stopped):
            lines += [FLAX_FLOAT64_NOTE, ""]
    if not_run:
        lines += ["Not run: " + ", ".join(not_run) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--input", default="2x97x75", help="N x H x W of the input (3 channels)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per preset and backend")
    parser.add_argument("--max-rss-gb", type=float, default=6.0, help="end a child resident above this")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not update RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n, h, w = (int(v) for v in args.input.split("x"))
    args.shape = (n, 3, h, w)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if args.child:
        preset, backend = args.child.split(":")
        child(preset, backend, args.dtypes, args.shape)
        return 0
    args.presets = [p for p in args.presets.split(",") if p]
    args.backends = [b for b in args.backends.split(",") if b]
    import resnet_multi as rm

    unknown = [p for p in args.presets if p not in rm.list_specs()]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}")

    started = time.strftime("%Y-%m-%d %H:%M")
    rows, results, stopped, reached, versions, bounds, failed = [], [], [], [], {}, {}, False
    for preset in args.presets:
        reached.append(preset)
        for backend in args.backends:
            pair, why = run_pair(preset, backend, args)
            for r in pair:
                results.append(r)
                versions.update(r["versions"])
                bounds[r["dtype"]] = (r["rtol"], r["atol"])
                rows.append(_row(r))
                print(rows[-1], flush=True)
                failed |= not r["ok"]
            if why:
                finished = {r["dtype"] for r in pair}
                missing = ", ".join(d for d in args.dtypes if d not in finished)
                stopped.append(f"{preset} {backend} ({missing}): {why}")
                print(f"{preset} {backend}: {why}", flush=True)
        if not args.no_write:
            text = _section(args, rows, stopped, reached, versions, started, bounds, results)
            _common.write_section(_heading(args.presets), text)
    print()
    print(_section(args, rows, stopped, reached, versions, started, bounds, results))
    return 1 if failed or stopped else 0


if __name__ == "__main__":
    sys.exit(main())
