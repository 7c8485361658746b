"""Prove that a change leaves everything a user sees bit-identical: dump fingerprints, then compare.

    python benchmarks/bit_identity.py dump OUT_DIR [--presets GLOB,...] [--force]
    python benchmarks/bit_identity.py compare A_DIR B_DIR [--common]

``dump`` records, for every preset x backend x model dtype (torch float32/float64/bfloat16, paddle
float32/float64, flax float32/float64/bfloat16) at a small odd input (1 x C x 33 x 47), the sha256
of every tap, of every exported weight, of every written file's bytes (.safetensors, .pt,
.pdparams, .msgpack), of what reading each file back gives and of a model importing it, the summary text, the numpy
oracle's taps, the inference fast path's taps and weights, and a few float64 (and one float32)
``check_training`` reports (losses and every compared tensor's error, bit for bit). It uses only
the public API (``rm.build``, ``rm.forward``, ``rm.export_weights``, ``rm.import_weights``,
``rm.save_weights``/``rm.load_weights``, ``rm.convert``, ``rm.reference_forward``, ``rm.summary``,
``rm.check_training``, ``rm.optimize_for_inference``), so that it runs unchanged on the commits
before and after a reshaping. An API call that raises is recorded as its error type and message,
so a changed error is a difference too.

Each preset runs in its own process (memory is returned when it ends) and is written to
``OUT_DIR/<preset>.json`` when complete; an interrupted dump resumes where it stopped (``--force``
redoes). ``compare`` prints every difference (what, preset, backend, dtype) and exits 1 if there
is any, or prints "identical" and exits 0.

Flax float32 and bfloat16 run with JAX's default 32-bit mode (what a user gets); flax float64 and
the float64 training checks switch ``jax_enable_x64`` on for their part only.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

MODEL_DTYPES = {  # backend -> the model dtypes it builds
    "torch": ("float32", "float64", "bfloat16"),
    "paddle": ("float32", "float64"),
    "flax": ("float32", "float64", "bfloat16"),
}
NATIVE_SUFFIX = {"torch": ".pt", "paddle": ".pdparams", "flax": ".msgpack"}
FILE_SUFFIXES = (".pt", ".pdparams", ".msgpack")  # a suffix per native format (.pth is .pt's writer)
HEIGHT, WIDTH = 33, 47  # odd, so that every stride-2 op sees an odd size somewhere
TRAINING = (  # (preset, dtype): small models, two steps, every backend; "/8" = 1/8 width, 1 block per stage
    ("d2l_resnet18", "float64"), ("d2l_densenet", "float64"), ("ghostnet_050", "float64"),
    ("resnet50d/8", "float64"), ("d2l_resnet18", "float32"),
)  # (full-size resnet50d's float64 Flax train step took minutes to compile and was killed under load)
TRAINING_FILE = "_training"
FAILED = object()  # what Recorder.run returns when the call raised


# --------------------------------------------------------------------------- fingerprints


def digest(value) -> str:
    """sha256 of an array (dtype, shape and bytes), a list/dict of arrays, or a file's bytes."""
    h = hashlib.sha256()
    if isinstance(value, Path):
        with open(value, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if isinstance(value, dict):
        for k, v in value.items():
            h.update(k.encode() + b"\0" + digest(v).encode())
        return h.hexdigest()
    if isinstance(value, (list, tuple)):
        for v in value:
            h.update(digest(v).encode())
        return h.hexdigest()
    a = np.asarray(value)
    h.update(f"{a.dtype.str}|{a.dtype.name}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a written file's bytes, except for the two parts that differ from run to run even
    on one commit: a torch zip's root folder is named after the temporary file it was written to
    (so it is dropped from every member's name), and safetensors writes its metadata (a Rust
    HashMap) in random order (so the header is hashed as sorted JSON). Everything else is the
    file's bytes: every zip member's name and content in order, the safetensors tensor table and
    data, the .pdparams and .msgpack files whole."""
    if path.suffix in (".pt", ".pth"):
        import zipfile

        h = hashlib.sha256()
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                h.update(info.filename.split("/", 1)[-1].encode() + b"\0" + f"{info.compress_type}|".encode())
                h.update(archive.read(info))
        return h.hexdigest()
    if path.suffix == ".safetensors":
        import struct

        data = path.read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.dumps(json.loads(data[8:8 + size]), sort_keys=True)
        return hashlib.sha256(header.encode() + b"\0" + data[8 + size:]).hexdigest()
    return digest(path)


def error_text(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class Recorder:
    """A flat dict ``"preset|backend|dtype|what" -> fingerprint``; a failing step records its error."""

    def __init__(self, preset: str):
        self.preset = preset
        self.values: dict[str, str] = {}

    def put(self, backend: str, dtype: str, what: str, value: str) -> None:
        self.values[f"{self.preset}|{backend}|{dtype}|{what}"] = value

    def run(self, backend: str, dtype: str, what: str, fn):
        """``fn()``; its error, if any, is recorded under ``what`` and FAILED is returned."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a changed error is a difference to report
            self.put(backend, dtype, what, error_text(exc))
            return FAILED

    def tensors(self, backend: str, dtype: str, what: str, arrays) -> None:
        """One entry per tensor, plus the order of the names."""
        if isinstance(arrays, dict):
            self.put(backend, dtype, f"{what}/@names", digest(list(np.frombuffer(n.encode(), np.uint8)
                                                                 for n in arrays)))
            for name, a in arrays.items():
                self.put(backend, dtype, f"{what}/{name}", digest(a))
        else:
            self.put(backend, dtype, what, digest(arrays))


# --------------------------------------------------------------------------- one preset


def _set_x64(on: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", on)


def _input(preset: str, channels: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(preset.encode()))
    return rng.standard_normal((1, channels, HEIGHT, WIDTH))  # float64; float32 models get it rounded


def _files(rec: Recorder, dtype: str, spec_name: str, weights, workdir: Path) -> dict[str, Path]:
    """Write ``weights`` in every format, fingerprint the bytes and what reading them back gives."""
    import resnet_multi as rm

    paths: dict[str, Path] = {}
    neutral = workdir / f"weights_{dtype}.safetensors"
    if rec.run("files", dtype, ".safetensors", lambda: rm.save_weights(neutral, weights, spec=spec_name)) is not FAILED \
            and neutral.exists():
        rec.put("files", dtype, ".safetensors", file_digest(neutral))
        paths[".safetensors"] = neutral
        loaded = rec.run("files", dtype, "load_weights", lambda: rm.load_weights(neutral))
        if loaded is not FAILED:
            rec.tensors("files", dtype, "load_weights", loaded[0])
            rec.put("files", dtype, "load_weights/spec", loaded[1].to_json() if loaded[1] is not None else "None")
    else:
        return paths
    for suffix in FILE_SUFFIXES:
        native = workdir / f"weights_{dtype}{suffix}"
        if rec.run("files", dtype, suffix, lambda: rm.convert(neutral, native, progress=False)) is not FAILED:
            rec.put("files", dtype, suffix, file_digest(native))
            paths[suffix] = native
            back = workdir / f"back_{dtype}{suffix.replace('.', '_')}.safetensors"
            if rec.run("files", dtype, f"{suffix}->.safetensors",
                       lambda: rm.convert(native, back, progress=False)) is not FAILED:
                rec.put("files", dtype, f"{suffix}->.safetensors", file_digest(back))
                back.unlink()
    cast = workdir / f"cast_{dtype}.safetensors"  # a cast on the way (float16: a dtype no model has)
    if rec.run("files", dtype, "cast float16",
               lambda: rm.convert(neutral, cast, dtype="float16", progress=False)) is not FAILED:
        rec.put("files", dtype, "cast float16", file_digest(cast))
        cast.unlink()
    return paths


def dump_preset(preset: str, out: Path) -> None:
    import resnet_multi as rm

    rec = Recorder(preset)
    spec = rm.get_spec(preset)
    x64 = _input(preset, spec.in_channels)
    rec.put("-", "-", "summary", str(rm.summary(preset)))
    rec.put("-", "-", "summary_odd", str(rm.summary(preset, input_shape=x64.shape)))
    rec.put("-", "-", "spec_json", spec.to_json())
    plan = rm.make_plan(spec)
    available = set(rm.available_backends())
    with tempfile.TemporaryDirectory(prefix="bit_identity_") as tmp:
        workdir = Path(tmp)
        for dtype in ("float32", "float64", "bfloat16"):
            x = x64 if dtype == "float64" else x64.astype(np.float32)
            backends = [b for b, dtypes in MODEL_DTYPES.items() if dtype in dtypes and b in available]
            if dtype == "float64" and "flax" in backends:
                _set_x64(True)
            paths: dict[str, Path] = {}
            for i, backend in enumerate(backends):
                t0 = time.perf_counter()
                model = rec.run(backend, dtype, "build", lambda: rm.build(spec, backend=backend, dtype=dtype, seed=0))
                if model is FAILED:
                    continue
                taps = rec.run(backend, dtype, "taps", lambda: rm.forward(model, x, taps=True))
                if taps is not FAILED:
                    rec.tensors(backend, dtype, "taps", taps)
                out_ = rec.run(backend, dtype, "output", lambda: rm.forward(model, x))
                if out_ is not FAILED:
                    rec.tensors(backend, dtype, "output", out_)
                weights = rec.run(backend, dtype, "export", lambda: rm.export_weights(model))
                if weights is not FAILED:
                    rec.tensors(backend, dtype, "export", weights)
                    if i == 0 and dtype in ("float32", "float64"):  # the oracle, once per precision
                        ref = rec.run("reference", dtype, "taps",
                                      lambda: rm.reference_forward(plan, weights, x, taps=True, precision=dtype))
                        if ref is not FAILED:
                            rec.tensors("reference", dtype, "taps", ref)
                # seed 1's weights, from the first backend of this dtype, are written in every
                # format; each backend imports them from its own native file
                if i == 0:
                    other = rec.run(backend, dtype, "build_seed1",
                                    lambda: rm.export_weights(rm.build(spec, backend=backend, dtype=dtype, seed=1)))
                    if other is not FAILED:
                        rec.put(backend, dtype, "export_seed1", digest(other))
                        paths = _files(rec, dtype, preset, other, workdir)
                        del other
                suffix = NATIVE_SUFFIX[backend]
                if suffix in paths:
                    what = f"import{suffix}"
                    if rec.run(backend, dtype, what, lambda: rm.import_weights(model, paths[suffix])) is not FAILED:
                        rec.tensors(backend, dtype, f"{what}/output", rm.forward(model, x))
                        rec.put(backend, dtype, f"{what}/export", digest(rm.export_weights(model)))
                # import from a dict (seed 0's weights back), then the inference fast path
                if weights is not FAILED and rec.run(backend, dtype, "reimport_seed0",
                                                   lambda: rm.import_weights(model, weights)) is not FAILED:
                    fast = rec.run(backend, dtype, "optimize_for_inference", lambda: rm.optimize_for_inference(model))
                    if fast is not FAILED:
                        fast_taps = rec.run(backend, dtype, "fast/taps", lambda: rm.forward(fast, x, taps=True))
                        if fast_taps is not FAILED:
                            rec.tensors(backend, dtype, "fast/taps", fast_taps)
                        fast_weights = rec.run(backend, dtype, "fast/export", lambda: rm.export_weights(fast))
                        if fast_weights is not FAILED:
                            rec.put(backend, dtype, "fast/export", digest(fast_weights))
                        del fast
                del model, weights, taps
                gc.collect()
                print(f"  {preset} {backend} {dtype}: {time.perf_counter() - t0:.1f} s", flush=True)
            for p in workdir.iterdir():
                p.unlink()
            if dtype == "float64" and "flax" in backends:
                _set_x64(False)
    (out / f"{preset}.json").write_text(json.dumps(rec.values, indent=0, sort_keys=True))


def _training_spec(name: str):
    """A preset, or with "/8" its architecture at 1/8 of the channels and one block per stage."""
    import resnet_multi as rm
    from dataclasses import replace

    if not name.endswith("/8"):
        return rm.get_spec(name)
    spec = rm.get_spec(name[:-2])
    return spec.replace(stages=tuple(replace(s, depth=1, channels=max(1, s.channels // 8)) for s in spec.stages),
                        stem=replace(spec.stem, widths=tuple(max(1, w // 8) for w in spec.stem.widths)))


def dump_training(out: Path) -> None:
    import resnet_multi as rm

    rec = Recorder(TRAINING_FILE)
    backends = tuple(b for b in MODEL_DTYPES if b in rm.available_backends())
    for preset, dtype in TRAINING:
        spec = _training_spec(preset)
        _set_x64(dtype == "float64")
        report = rec.run(preset, dtype, "check_training",
                         lambda: rm.check_training(spec, backends=backends, steps=2, dtype=dtype,
                                                   input_shape=(2, spec.in_channels, HEIGHT, WIDTH)))
        if report is FAILED:
            continue
        rec.put(preset, dtype, "ok", str(report.ok))
        for backend, losses in report.losses.items():
            rec.put(preset, dtype, f"losses/{backend}", " ".join(float(v).hex() for v in losses))
        for r in report.records:
            rec.put(preset, dtype, f"record/{r.step}/{r.phase}/{r.backend}/{r.tensor}",
                    f"{float(r.rel).hex()} ok={r.ok}")
        rec.put(preset, dtype, "to_dict", hashlib.sha256(json.dumps(report.to_dict(), sort_keys=True).encode())
                .hexdigest())
        rec.put(preset, dtype, "text", str(report))
        del report
        gc.collect()
        print(f"  training {preset} {dtype} done", flush=True)
    _set_x64(False)
    (out / f"{TRAINING_FILE}.json").write_text(json.dumps(rec.values, indent=0, sort_keys=True))


# --------------------------------------------------------------------------- commands


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("numpy", "ml_dtypes", "safetensors", "torch", "paddlepaddle", "jax", "jaxlib", "flax"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    found["python"] = sys.version.split()[0]
    return found


def dump(out: Path, patterns: list[str], force: bool) -> int:
    import resnet_multi as rm

    out.mkdir(parents=True, exist_ok=True)
    presets = [p for p in rm.list_specs() if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
    jobs = presets + ([TRAINING_FILE] if any(fnmatch.fnmatchcase(TRAINING_FILE, pat) for pat in patterns)
                      or patterns == ["*"] else [])
    (out / "_meta.json").write_text(json.dumps({"versions": _versions(), "presets": rm.list_specs(),
                                                "commit": _commit()}, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    failed = []
    for job in jobs:
        if (out / f"{job}.json").exists() and not force:
            print(f"{job}: already dumped (--force redoes it)")
            continue
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "_one", job, str(out)], env=env)
        if done.returncode != 0:
            failed.append(job)
        print(f"{job}: {time.perf_counter() - t0:.0f} s{'' if done.returncode == 0 else ' FAILED'}", flush=True)
    print(f"dump: {time.perf_counter() - start:.0f} s in all -> {out}")
    if failed:
        print(f"dump: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _commit() -> str:
    try:
        import resnet_multi

        root = Path(resnet_multi.__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "-"
    except Exception:  # noqa: BLE001 - only informative
        return "-"


def compare(a_dir: Path, b_dir: Path, common: bool = False) -> int:
    differences = 0
    meta_a, meta_b = (json.loads((d / "_meta.json").read_text()) for d in (a_dir, b_dir))
    if meta_a["versions"] != meta_b["versions"]:
        print(f"note: package versions differ: {meta_a['versions']} vs {meta_b['versions']}")
    if meta_a["presets"] != meta_b["presets"]:
        print(f"DIFF list_specs: {meta_a['presets']} vs {meta_b['presets']}")
        differences += 1
    names = sorted({p.name for d in (a_dir, b_dir) for p in d.glob("*.json") if p.name != "_meta.json"})
    names_compared = len(names)
    for name in names:
        pa, pb = a_dir / name, b_dir / name
        if not (pa.exists() and pb.exists()):
            if common:
                print(f"note: {name} only in {a_dir if pa.exists() else b_dir} (not compared: --common)")
                names_compared -= 1
                continue
            print(f"DIFF {name}: only in {a_dir if pa.exists() else b_dir}")
            differences += 1
            continue
        va, vb = json.loads(pa.read_text()), json.loads(pb.read_text())
        for key in sorted(va.keys() | vb.keys()):
            if va.get(key) != vb.get(key):
                preset, backend, dtype, what = key.split("|", 3)
                differences += 1
                print(f"DIFF what={what} preset={preset} backend={backend} dtype={dtype}: "
                      f"{_short(va.get(key))} vs {_short(vb.get(key))}")
    if differences:
        print(f"{differences} difference(s) between {a_dir} and {b_dir}")
        return 1
    print(f"identical ({names_compared} files: {meta_a.get('commit', '-')[:10]} vs {meta_b.get('commit', '-')[:10]})")
    return 0


def _short(value) -> str:
    if value is None:
        return "(missing)"
    text = value.replace("\n", "\\n")
    return text if len(text) <= 90 else text[:87] + "..."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="fingerprint every preset x backend x dtype into OUT_DIR")
    d.add_argument("out", type=Path)
    d.add_argument("--presets", default="*", help="comma-separated globs of preset names (and _training)")
    d.add_argument("--force", action="store_true", help="redo presets already dumped")
    c = sub.add_parser("compare", help="print every difference between two dumps; exit 1 on any")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--common", action="store_true", help="compare only the presets dumped in both (partial dumps)")
    one = sub.add_parser("_one")  # internal: one preset (or the training checks) in this process
    one.add_argument("job")
    one.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "dump":
        return dump(args.out, args.presets.split(","), args.force)
    if args.command == "compare":
        return compare(args.a, args.b, args.common)
    if args.job == TRAINING_FILE:
        dump_training(args.out)
    else:
        dump_preset(args.job, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
