"""The ``resnet-multi`` command: list | spec | summary | convert | inspect | parity | adopt.

Exit codes, one rule for every command:

- 0: success.
- 1: the command ran and failed: a check did not pass, or a checkpoint (or report) could not be
  read or written (missing, corrupt, mismatched, disk full).
- 2: the command could not start: the arguments are wrong (an unknown option, preset or backend,
  a value out of range, an ``--input`` that does not fit the spec) or the spec they name is
  missing or invalid. Found before any work is done.
- 130: interrupted (Ctrl-C).

Every error is one line on stderr, ``resnet-multi COMMAND: error: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings


class UsageError(ValueError):
    """Arguments that do not fit together (exit code 2)."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive integers N,C,H,W, got {text!r}")
    return shape


def _spec_argument(text: str):
    """The spec a command line names (preset or spec file); a missing file, or a network above
    ``resnet_multi.limits``, is a bad argument (exit 2), found before any work."""
    from .limits import LimitError
    from .plan import make_plan
    from .zoo import resolve_spec

    try:
        spec = resolve_spec(text)
        make_plan(spec)  # sized (resnet_multi.limits) before anything is built
    except (FileNotFoundError, LimitError) as exc:
        raise UsageError(str(exc)) from None
    return spec


def _cmd_spec(args) -> int:
    import yaml

    spec = _spec_argument(args.spec)
    if args.output:
        from .spec import save_spec

        save_spec(spec, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return 0


def _cmd_list(args) -> int:
    from .zoo import get_spec, list_specs

    for name in list_specs(args.pattern):
        spec = get_spec(name)
        depths = "-".join(str(s.depth if s.blocks is None else len(s.blocks)) for s in spec.stages)
        head = f"{spec.head.num_classes} classes" if spec.head else "no head"
        print(f"{name:<18} {spec.block.kind:<11} depths {depths:<12} in_channels {spec.in_channels}  {head}".replace(
            f"depths {depths} in_channels", f"depths {depths}  in_channels"))  # a long depths column stays apart
    return 0


def _cmd_summary(args) -> int:
    from .summary import summary

    spec = _spec_argument(args.spec)
    shape = args.input or (1, spec.in_channels, 224, 224)
    try:
        table = summary(spec, input_shape=shape)
    except ValueError as exc:  # the --input shape does not fit the spec
        raise UsageError(str(exc)) from None
    print(table)
    if args.diagram:
        from .reports.diagram import diagram

        diagram(spec, args.diagram, input_shape=shape)
        print(f"wrote {args.diagram}", file=sys.stderr)
    return 0


def _checkpoint(text: str) -> str:
    """A checkpoint path whose suffix names a supported format (an unknown suffix is a bad argument)."""
    from .convert import format_of_suffix

    try:
        format_of_suffix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@contextlib.contextmanager
def _warnings_as_messages(command: str):
    """Print the library's warnings about the weights (lossy cast, NaN/Inf) as one line each,
    ``resnet-multi COMMAND: warning: ...`` on stderr, also when the command then fails; other
    warnings (from the frameworks) are shown as Python shows them."""
    from .convert import PrefixWarning
    from .weights import NonFiniteWarning, PrecisionWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always", PrecisionWarning)
            warnings.simplefilter("always", NonFiniteWarning)
            warnings.simplefilter("always", PrefixWarning)
            try:
                yield
            finally:
                caught = list(records)
    finally:  # shown after catch_warnings has restored showwarning (inside, it appends to records)
        for w in caught:
            if issubclass(w.category, (PrecisionWarning, NonFiniteWarning, PrefixWarning)):
                print(f"resnet-multi {command}: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _cmd_convert(args) -> int:
    from .convert import NEUTRAL, check_naming, convert, format_of_suffix
    from .plan import make_plan

    spec = _spec_argument(args.spec) if args.spec is not None else None
    dst_format = format_of_suffix(args.dst)
    if args.naming is not None and (spec is not None or dst_format == NEUTRAL):
        try:  # known before any work: a bad argument (without --spec, the file's spec decides: exit 1)
            check_naming(make_plan(spec) if spec is not None else None, args.naming, dst_format)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    with _warnings_as_messages("convert"):
        convert(args.src, args.dst, spec=spec, dtype=args.dtype, force=args.force, prefix=args.prefix,
                naming=args.naming)
    print(f"wrote {args.dst}", file=sys.stderr)
    return 0


def _cmd_inspect(args) -> int:
    from .convert import inspect_file

    with _warnings_as_messages("inspect"):
        report = inspect_file(args.file, prefix=args.prefix)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0


_TRAIN_ONLY = ("steps", "optimizer", "lr", "momentum", "weight_decay")


def _without_dropout(spec):
    """``spec`` with its train-mode dropout set to 0, and a note saying so: each framework draws its own
    masks, so trainings with dropout cannot be compared (check_training refuses them); the GhostNet
    presets have head dropout. The API leaves this choice to the caller."""
    import dataclasses

    changed = []
    if spec.head is not None and spec.head.dropout:
        changed.append(f"head.dropout {spec.head.dropout:g}")
        spec = spec.replace(head=dataclasses.replace(spec.head, dropout=0.0))
    if spec.block.drop_rate:
        changed.append(f"block.drop_rate {spec.block.drop_rate:g}")
        spec = spec.replace(block=dataclasses.replace(spec.block, drop_rate=0.0))
    if changed:
        print(f"resnet-multi parity: note: {' and '.join(changed)} set to 0 for --train (each framework draws its "
              "own dropout masks, so trainings with dropout cannot be compared)", file=sys.stderr)
    return spec


def _training_report(args, spec, backends):
    """``parity --train``: check_training with the optimizer the options describe."""
    from .training import DEFAULT_SETTINGS, IllConditionedError, OptimizerError, check_training, optimizer_spec

    for option in ("atol", "all_taps"):
        if getattr(args, option) not in (None, False):
            raise UsageError(f"--{option.replace('_', '-')} applies to forward parity, not to --train")
    name = args.optimizer or "sgd"
    settings = dict(DEFAULT_SETTINGS[name])
    given = {key: getattr(args, key) for key in ("lr", "momentum", "weight_decay") if getattr(args, key) is not None}
    if name != "sgd" and "momentum" in given:
        raise UsageError(f"--momentum: optimizer {name!r} has no momentum")
    settings.update(given)
    reference = None if args.reference == "numpy" else args.reference  # no numpy trainer: a backend is the reference
    if args.dtype == "bfloat16":
        raise UsageError("--dtype bfloat16: training parity runs in float64 (a proof) or float32 (noise)")
    if (args.dtype or "float64") == "float64":
        # The command owns its process: JAX computes in float64 only in its 64-bit mode, which it
        # reads from this variable when first imported (the library itself never flips the switch).
        os.environ.setdefault("JAX_ENABLE_X64", "1")
    spec = _without_dropout(spec)
    try:
        optimizer = optimizer_spec(name, **settings)
        return check_training(spec, backends=backends, steps=args.steps or 3, optimizer=optimizer,
                              dtype=args.dtype or "float64", weights=args.weights, input_shape=args.input,
                              seed=args.seed, rtol=args.rtol, reference=reference)
    except (OptimizerError, IllConditionedError) as exc:  # a bad argument: a value a framework would round,
        raise UsageError(str(exc)) from None  # or an --input too small to train on


def _cmd_parity(args) -> int:
    from .parity import check_parity
    from .plan import make_plan

    spec = _spec_argument(args.spec)
    if args.input is not None:
        try:
            make_plan(spec).check_input_shape(args.input, what="--input")
        except ValueError as exc:  # a shape that does not fit the spec is a bad argument, not a failed check
            print(f"resnet-multi parity: error: {exc}", file=sys.stderr)
            return 2
    backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    if args.train:
        report = _training_report(args, spec, backends)
    else:
        given = [f"--{key.replace('_', '-')}" for key in _TRAIN_ONLY if getattr(args, key) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --train")
        dtype = args.dtype or "float32"
        if dtype == "float64":  # as for --train: this process's JAX computes float64 only in 64-bit mode
            os.environ.setdefault("JAX_ENABLE_X64", "1")
        report = check_parity(spec, backends=backends, weights=args.weights, input_shape=args.input, seed=args.seed,
                              rtol=args.rtol, atol=args.atol, reference=args.reference, dtype=dtype)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        print(report.format() if args.train else report.format(all_taps=args.all_taps))
        if args.json:
            from .io_util import atomic_write_text

            atomic_write_text(args.json, text)
            print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:  # written for failing reports too: that is when a picture is wanted
        report.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.html:
        import shlex

        from .reports.html import write_html

        write_html(report, args.html, spec=spec, command=shlex.join(["resnet-multi", *args.argv]))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0 if report.ok else 1


def _output_file(suffixes: tuple[str, ...]):
    """An argparse type for a picture or report path: its suffix must be one of ``suffixes``, and
    matplotlib (the ``plot`` extra) must be installed; checked before any work is done."""
    def check(text: str) -> str:
        from pathlib import Path

        if Path(text).suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a file name ending in {', '.join(suffixes)}")
        from .reports.canvas import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


_PICTURE = (".png", ".svg", ".pdf")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _bounds_text(which: int) -> str:
    """The forward parity default of rtol (0) or atol (1) per dtype, as the help says it: '1e-5 float32, ...'."""
    from .reports.tolerances import BOUNDS, short_number

    return ", ".join(f"{short_number(bound[which])} {dtype}" for dtype, bound in BOUNDS.items())


def make_parser() -> argparse.ArgumentParser:
    from .registry import backend_names
    from .reports.tolerances import BOUNDS, TRAINING_RTOL, short_number

    every_backend = ",".join(backend_names())
    parser = argparse.ArgumentParser(
        prog="resnet-multi",
        description="One ResNet spec, native PyTorch / PaddlePaddle / Flax models, shared weights.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the preset specs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("spec", help="print a preset's (or a spec file's) spec as YAML, to start a variant from",
                       description="Print the spec as YAML that rm.load_spec reads back equal; -o writes it to a "
                                   "file instead (.yaml/.yml or .json, by its suffix).")
    p.add_argument("spec", help="preset name or spec file (.json/.yaml)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=_cmd_spec)

    p = sub.add_parser("summary", help="output shapes, parameters and MACs of a spec (no framework needed)")
    p.add_argument("spec", help="preset name or spec file (.json/.yaml)")
    p.add_argument("--input", type=_shape, default=None, help="input shape N,C,H,W (default 1,C,224,224)")
    p.add_argument("--diagram", type=_output_file(_PICTURE), default=None, metavar="FILE",
                   help="also draw the architecture to FILE (.png, .svg or .pdf; needs resnet_multi[plot])")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("convert", help="convert a checkpoint between .pth/.pt, .pdparams, .msgpack, .safetensors",
                       description="Convert a checkpoint; tensors keep their dtype (float16, bfloat16, float32, "
                                   "float64) bit for bit unless --dtype is given. The output directory must "
                                   "exist (it is not created).")
    p.add_argument("src", type=_checkpoint, help="input checkpoint (never modified)")
    p.add_argument("dst", type=_checkpoint, help="output checkpoint; format from its suffix")
    p.add_argument("--spec", default=None, help="preset name or spec file (default: inferred from the shapes)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16", "float64"),
                   help="cast every tensor to this dtype (default: keep each tensor's dtype); widening is "
                        "exact, a cast that changes values warns with the largest relative change")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--prefix", default=None, help="read only the tensors under this prefix, e.g. 'backbone.' (default: "
                                                  "found when the names match no preset as they are)")
    p.add_argument("--naming", default=None, metavar="SCHEME",
                   help="write the tensors under another naming scheme of the spec, e.g. 'timm' for a ConvNeXt "
                        "(timm's convnext_* names and shapes); default: canonical names. Any naming the spec "
                        "declares is read as it is, without this option")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("inspect", help="format, tensor count, size, dtypes (per tensor group), NaN/Inf tensors "
                                       "and matching preset of a checkpoint")
    p.add_argument("file", type=_checkpoint, help="checkpoint (.pth/.pt, .pdparams, .msgpack, .safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prefix", default=None, help="inspect only the tensors under this prefix, e.g. 'backbone.'")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("parity", help="check that backends compute the same function, tap by tap",
                       description="Build the spec in each backend with the same weights, run the same input, "
                                   "and compare every tap (stem, blocks, stages, pre_logits, logits) with a "
                                   "reference. A tap passes when max|out - ref| <= atol + rtol * max|ref|. "
                                   "Exit code 0: all pass; 1: some tap fails; 2: bad arguments.")
    p.add_argument("spec", help="preset name or spec file (.json/.yaml)")
    p.add_argument("--backends", default=every_backend,
                   help=f"comma-separated backends (default {every_backend}); 'numpy' adds the oracle as a row "
                        "when --reference is a backend")
    p.add_argument("--reference", default="numpy",
                   help="what the backends are compared with: 'numpy' (float64 oracle, default) or a backend")
    p.add_argument("--weights", default=None,
                   help="checkpoint to use, any supported format (default: random, randomized BN stats)")
    p.add_argument("--input", type=_shape, default=None,
                   help="input shape N,C,H,W (default 1,C,33,47: odd and non-square)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the default weights and input (an integer >= 0)")
    p.add_argument("--rtol", type=_tolerance, default=None,
                   help=f"relative to max |reference| per tap (default by --dtype: {_bounds_text(0)}); with --train "
                        f"per tensor (default {short_number(TRAINING_RTOL)} in float64; none in float32, where errors "
                        "are reported as noise)")
    p.add_argument("--atol", type=_tolerance, default=None,
                   help=f"absolute floor (default by --dtype: {_bounds_text(1)})")
    p.add_argument("--all-taps", action="store_true", help="list every tap, not only the failing ones")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the report as JSON to FILE ('-': JSON on stdout instead of the table)")
    p.add_argument("--plot", type=_output_file(_PICTURE), default=None, metavar="FILE",
                   help="also draw the error of every tap per backend to FILE (.png, .svg or .pdf)")
    p.add_argument("--html", type=_output_file((".html", ".htm")), default=None, metavar="FILE",
                   help="also write a self-contained HTML report to FILE: plot, summary, every tap's numbers, "
                        "spec and environment")
    t = p.add_argument_group(
        "training parity (--train)",
        "Train every backend from the same weights, batch (default 4,C,33,47; 8,C,33,47 where a BatchNorm would "
        "otherwise see fewer than 8 values per channel, as in the DenseNets) and labels for a few steps "
        "(train mode, cross-entropy, each framework's own optimizer) and compare, per step, every BN running "
        "statistic, the loss, every gradient and every parameter after the update with the reference backend "
        "(--reference, default the first of --backends).")
    t.add_argument("--train", action="store_true", help="check training instead of the forward pass")
    t.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (default 3)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default sgd")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: sgd 0.1, adamw 1e-3)")
    t.add_argument("--momentum", type=float, default=None, help="sgd momentum (default 0.875)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="sgd: L2 before momentum (default 2**-10); adamw: decoupled (default 2**-7)")
    p.add_argument("--dtype", choices=tuple(BOUNDS), default=None,
                   help="the models' dtype. Forward parity: float32 (default), float64 or bfloat16, each with its "
                        f"own default bound. --train: float64 (default; a {short_number(TRAINING_RTOL)} bound proves "
                        "agreement) or float32 "
                        "(norm-relative noise only: exit 0 unless a tensor is missing or not finite)")
    p.set_defaults(func=_cmd_parity)

    from .adopt import add_adopt_command  # resnet-multi adopt: see resnet_multi/adopt.py

    add_adopt_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # quoted in reports (--html)
    from .registry import BackendError
    from .spec import SpecError

    try:
        return args.func(args)
    except (SpecError, BackendError, KeyError, UsageError) as exc:  # bad arguments: unknown preset, invalid spec file
        print(f"resnet-multi {args.command}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # unreadable, corrupt or mismatched files
        print(f"resnet-multi {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the writers have removed their temporary files on the way out
        print(f"resnet-multi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
