"""Training: one optimizer description for every framework, and training parity.

``optimizer(model, "sgd" | "adamw", ...)`` validates a framework-neutral description (``SGD`` or
``AdamW``, frozen dataclasses) and hands it to the model's backend, which returns the
framework's own optimizer (``torch.optim.SGD``/``AdamW``, ``paddle.optimizer.Momentum``/``AdamW``,
``flax.nnx.Optimizer`` over an optax chain). Each backend maps the description in its
``# ---- training`` section; the conventions they must agree on:

- SGD: ``v = momentum * v + (g + weight_decay * p)``; ``p -= lr * v`` (first step ``v = g +
  weight_decay * p``); Nesterov: ``p -= lr * (g' + momentum * v)`` with ``g'`` the decayed gradient.
  Weight decay is L2, added to the gradient before momentum (torch ``weight_decay=``, Paddle
  ``L2Decay``, optax ``add_decayed_weights`` before ``sgd``).
- AdamW: bias-corrected Adam with ``eps`` added to ``sqrt(v_hat)`` (outside the square root), and
  decoupled decay ``p -= lr * weight_decay * p``.
- Every trainable parameter is optimized and decayed, BatchNorm scales and biases included (each
  framework's default); BatchNorm running statistics never are (Paddle keeps them as parameters
  with ``stop_gradient=True``: they are left out).

``check_training(spec, ...)`` runs the same few training steps in several backends and reports,
per step, where they first disagree (see ``TrainingReport``, ``resnet_multi.reports.training``'s,
re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterable, Mapping, Sequence

from ._lazy import np
from . import api
from .parity import resolve_spec_and_weights
from .plan import Dropout, DropPath, Plan, make_plan
from .registry import Backend, BackendError, backend_names, backend_of, get_backend
from .reports.tolerances import FLOOR, MIN_BN_VALUES, TRAINING_RTOL
# the report and its records: their old home is this module
from .reports.training import LOSS, PHASES, TrainingDivergence, TrainingRecord, TrainingReport  # noqa: F401
from .weights import check_weights, random_weights

# --------------------------------------------------------------------------- optimizer descriptions


class OptimizerError(ValueError):
    """An optimizer setting out of range, unknown, or one a framework cannot represent exactly."""


class IllConditionedError(ValueError):
    """An input that leaves a train-mode BatchNorm too few values per channel to compare trainings
    (``MIN_BN_VALUES``): the error names the layer, its values per channel and what to change."""


def _smallest_map(plan: Plan, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    """(tap, NCHW shape) of the network's smallest feature map at ``shape``, where its last BatchNorms
    run; None without BatchNorm."""
    from .ir.shapes import trace

    if not any(info.role == "bn_var" for info in plan.params.values()):
        return None
    maps = {tap: s for tap, (s, _) in trace(plan, shape).items() if len(s) == 4}
    tap = min(maps, key=lambda t: maps[t][0] * maps[t][2] * maps[t][3])
    return tap, maps[tap]


def default_training_shape(plan: Plan) -> tuple[int, int, int, int]:
    """check_training's default batch: ``DEFAULT_BATCH`` inputs of ``DEFAULT_INPUT_HW``, more inputs where
    a BatchNorm would otherwise see fewer than ``MIN_BN_VALUES`` values per channel (8 for the DenseNets,
    whose last maps are 1x1)."""
    shape = (DEFAULT_BATCH, plan.in_channels, *DEFAULT_INPUT_HW)
    smallest = _smallest_map(plan, shape)
    if smallest is not None:
        _, (_, _, h, w) = smallest
        shape = (max(DEFAULT_BATCH, -(-MIN_BN_VALUES // (h * w))), *shape[1:])
    return shape


def _check_batchnorm_values(plan: Plan, shape: tuple[int, ...]) -> None:
    """Refuse ``shape`` if a train-mode BatchNorm would normalize over fewer than ``MIN_BN_VALUES``
    values per channel: the smallest feature map of the network (batch x height x width), where its
    last BatchNorms run."""
    smallest = _smallest_map(plan, shape)
    if smallest is None:
        return
    tap, (n, _, h, w) = smallest
    if n * h * w < MIN_BN_VALUES:
        raise IllConditionedError(
            f"input shape {tuple(shape)}: the BatchNorms at {tap} ({h}x{w}) normalize over {n * h * w} value(s) "
            f"per channel (batch {n} x {h}x{w}); below {MIN_BN_VALUES} a training is ill-conditioned (gradients "
            "of the order of eps), so backends cannot be compared. Use a larger batch or input.")


def _number(owner: str, name: str, value, *, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> float:
    """``value`` as a float within [low, high] (bounds open as asked), or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptimizerError(f"{owner}: {name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise OptimizerError(f"{owner}: {name} must be in {interval}, got {value!r}")
    return value


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay, as torch.optim.SGD
    (dampening 0): the decay ``weight_decay * p`` is added to the gradient before momentum.

    Attributes:
        lr: learning rate (> 0).
        momentum: in [0, 1); 0 is plain SGD.
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 coefficient (>= 0).
    """

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    name: str = field(default="sgd", init=False)

    def __post_init__(self):
        owner = "optimizer 'sgd'"
        object.__setattr__(self, "lr", _number(owner, "lr", self.lr, low=0.0, low_open=True))
        object.__setattr__(self, "momentum", _number(owner, "momentum", self.momentum, low=0.0, high=1.0,
                                                     high_open=True))
        object.__setattr__(self, "weight_decay", _number(owner, "weight_decay", self.weight_decay, low=0.0))
        if not isinstance(self.nesterov, bool):
            raise OptimizerError(f"{owner}: nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise OptimizerError(f"{owner}: nesterov=True needs momentum > 0, got momentum={self.momentum!r}")


@dataclass(frozen=True)
class AdamW:
    """Adam with decoupled weight decay, as torch.optim.AdamW (no amsgrad): bias-corrected moments,
    ``p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``.

    Attributes:
        lr: learning rate (> 0).
        betas: (beta1, beta2), each in [0, 1).
        eps: added to sqrt(v_hat) (> 0).
        weight_decay: decoupled decay coefficient (>= 0), scaled by lr.
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    name: str = field(default="adamw", init=False)

    def __post_init__(self):
        owner = "optimizer 'adamw'"
        object.__setattr__(self, "lr", _number(owner, "lr", self.lr, low=0.0, low_open=True))
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise OptimizerError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        object.__setattr__(self, "betas", tuple(_number(owner, f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
                                                for i, b in enumerate(betas)))
        object.__setattr__(self, "eps", _number(owner, "eps", self.eps, low=0.0, low_open=True))
        object.__setattr__(self, "weight_decay", _number(owner, "weight_decay", self.weight_decay, low=0.0))


OptimizerSpec = SGD | AdamW
_OPTIMIZERS = {"sgd": SGD, "adamw": AdamW}


def optimizer_spec(name, **settings) -> OptimizerSpec:
    """The neutral description of optimizer ``name`` ("sgd" or "adamw") with ``settings``.

    Raises:
        ValueError: an unknown optimizer, a setting it does not have, or a value out of range
            (the message names the setting).
    """
    if isinstance(name, (SGD, AdamW)):
        if settings:
            raise OptimizerError(f"optimizer: settings {', '.join(sorted(settings))} given beside a ready "
                             f"{type(name).__name__} description")
        return name
    if name not in _OPTIMIZERS:
        raise OptimizerError(f"optimizer: unknown optimizer {name!r}; known: {', '.join(_OPTIMIZERS)}")
    cls = _OPTIMIZERS[name]
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise OptimizerError(f"optimizer {name!r}: no setting {', '.join(unknown)}; "
                             f"its settings are {', '.join(known)}")
    if "lr" not in settings:
        raise OptimizerError(f"optimizer {name!r}: lr (the learning rate) is required")
    return cls(**settings)


def _contract_members() -> tuple[str, ...]:
    """What the Backend protocol asks of a backend module (its attributes and functions)."""
    functions = [name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")]
    return (*Backend.__annotations__, *functions)


def _trainer(backend):
    """``backend``, once it keeps the backend contract, training included (``registry.Backend``:
    ``make_optimizer`` and ``train_step``); otherwise a BackendError naming what it lacks."""
    if not isinstance(backend, Backend):
        missing = [name for name in _contract_members() if name not in dir(backend)]
        raise BackendError(f"backend {getattr(backend, 'NAME', backend.__name__)!r} does not keep the backend "
                           f"contract (resnet_multi.registry.Backend), so it cannot train: its module defines no "
                           f"{', '.join(missing)}")
    return backend


def optimizer(model, name: str | OptimizerSpec = "sgd", **settings):
    """The model's framework's own optimizer for the neutral description ``name`` + ``settings``.

    Args:
        model: a model built by ``rm.build`` (torch, paddle or flax).
        name: "sgd" (settings: lr, momentum=0.0, nesterov=False, weight_decay=0.0) or "adamw"
            (settings: lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), or a ready ``SGD`` /
            ``AdamW`` description.
    Returns:
        torch: ``torch.optim.SGD`` / ``torch.optim.AdamW`` over ``model.parameters()``.
        paddle: ``paddle.optimizer.Momentum`` (weight decay as ``L2Decay``) / ``paddle.optimizer.AdamW``
        over the trainable parameters (BatchNorm's ``_mean``/``_variance`` left out).
        flax: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` with ``tx`` =
        ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(...))`` / ``optax.adamw(...)``.
    Raises:
        OptimizerError (a ValueError): a setting unknown or out of range, or one the framework
            cannot represent exactly for this model. Paddle holds momentum and weight decay as
            float32 even in a float64 model, so for a float64 Paddle model they must be exact
            float32 values (0.875, 2**-10, ``float(np.float32(0.9))``...): the message says which.
    Example:
        >>> opt = rm.optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    """
    spec = optimizer_spec(name, **settings)
    return _trainer(backend_of(model)).make_optimizer(model, spec)


# --------------------------------------------------------------------------- the report

FLOAT64_RTOL = TRAINING_RTOL
"""float64 bound, relative per tensor (``resnet_multi.reports.tolerances.TRAINING_RTOL``: the
measured noise and what a bug gives are documented there)."""


# --------------------------------------------------------------------------- comparing


def _compare(step: int, phase: str, backend: str, names: Sequence[str], outs: Mapping, refs: Mapping, *,
             rtol: float, norm: bool) -> list[TrainingRecord]:
    """Records for ``names`` of one step and phase: ``outs[name]`` against ``refs[name]``."""
    refs64 = {n: np.asarray(refs[n], dtype=np.float64) for n in names if n in refs}

    def size(a):
        return float(np.linalg.norm(a.ravel())) if norm else (float(np.max(np.abs(a))) if a.size else 0.0)

    sizes = {n: size(a) for n, a in refs64.items()}
    floor = FLOOR * max(sizes.values(), default=0.0)
    # the scale of each tensor's module (a conv's weight and bias, a BN's weight and bias, its running
    # mean and variance): a tensor that is zero in exact arithmetic (the gradient of a conv bias before
    # a train-mode BN) holds the rounding noise of its module's sums, not of its own size
    module_sizes: dict[str, float] = {}
    for n, value in sizes.items():
        module = n.rpartition(".")[0]
        module_sizes[module] = max(module_sizes.get(module, 0.0), value)
    records = []
    for n in names:
        ref = refs64.get(n)
        out = outs.get(n)
        shape = tuple(np.shape(ref if ref is not None else out)) if (ref is not None or out is not None) else ()

        def failed(note):
            return TrainingRecord(step, phase, backend, n, shape, math.inf, sizes.get(n, math.nan), math.inf,
                                  rtol, False, note)

        if ref is None and out is None:
            continue  # a tensor neither run has (a frozen parameter in both): nothing to compare
        if ref is None:
            records.append(failed("the reference has none (frozen in the reference?)"))
            continue
        if out is None:
            records.append(failed("missing: the backend gave none (a frozen parameter?)"))
            continue
        out = np.asarray(out, dtype=np.float64)
        if out.shape != ref.shape:
            records.append(failed(f"shape {out.shape} != reference {ref.shape}"))
            continue
        max_abs = size(out - ref)  # nan if out has nan
        scale = max(sizes[n], module_sizes[n.rpartition(".")[0]], floor)
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        records.append(TrainingRecord(step, phase, backend, n, shape, max_abs, sizes[n], rel, rtol,
                                      bool(rel <= rtol)))
    return records


# --------------------------------------------------------------------------- running


DEFAULT_INPUT_HW = (33, 47)
DEFAULT_BATCH = 4
DEFAULT_SETTINGS = {"sgd": dict(lr=0.1, momentum=0.875, weight_decay=2.0 ** -10),
                    "adamw": dict(lr=1e-3, weight_decay=2.0 ** -7)}
"""check_training's settings for an optimizer given by name: momentum and weight decay are exact
float32 values, since Paddle holds them as float32 even in a float64 model (see ``optimizer``)."""
DEFAULT_OPTIMIZER = SGD(**DEFAULT_SETTINGS["sgd"])


@dataclass
class _Run:
    """One backend's trajectory: per step the loss, the gradients, and the weights after the update."""

    losses: list = field(default_factory=list)
    gradients: list = field(default_factory=list)
    weights: list = field(default_factory=list)


def _build(name: str, spec, weights, dtype: str):
    """The backend and its model."""
    backend = _trainer(get_backend(name))
    return backend, api.build(spec, backend=name, weights=weights, dtype=dtype)


def _train(backend, model, opt: OptimizerSpec, x, labels, steps: int) -> _Run:
    native = backend.make_optimizer(model, opt)
    run = _Run()
    for _ in range(steps):
        loss, grads = backend.train_step(model, native, x, labels)
        run.losses.append(float(loss))
        run.gradients.append(grads)
        run.weights.append(backend.export_weights(model))
    return run


def _labels(plan: Plan, labels, batch: int, seed: int) -> np.ndarray:
    classes = training_classes(plan)
    if labels is None:
        return np.random.default_rng((seed, 2)).integers(0, classes, batch).astype(np.int64)
    y = np.asarray(labels)
    if y.shape != (batch,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected {batch} integer class indices (one per input), got shape {y.shape} "
                         f"dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels: class indices must be in [0, {classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def training_classes(plan: Plan) -> int:
    """Number of classes the training loss sees: the head's outputs; without a head, the channels
    of the output feature maps, globally average-pooled and concatenated (see ``check_training``)."""
    if plan.head is not None:
        return plan.head.out_channels
    out = {s.name: s.out_channels for s in plan.stages}
    return sum(out[name] for name in plan.output_names())


def check_training(spec, backends: Iterable[str] = backend_names(), steps: int = 3,
                   optimizer: OptimizerSpec | str | None = None, dtype: str = "float64", weights=None, inputs=None,
                   labels=None, *, input_shape: Sequence[int] | None = None, seed: int = 0,
                   rtol: float | None = None, reference: str | None = None) -> TrainingReport:
    """Train the same model for a few steps in several backends and compare every number.

    Every backend builds ``spec`` with the same canonical weights (``dtype``), takes the same batch
    and labels in train mode, with mean cross-entropy loss and the framework's own optimizer for
    the same neutral description (``optimizer``), through its own autodiff (for Flax the standard
    step: ``nnx.jit`` around ``nnx.value_and_grad`` and ``nnx.Optimizer.update``). Per step, in
    execution order, it compares with the reference run: every BatchNorm running statistic (updated
    by the forward pass), the loss, every gradient (in backward order, last layer first), every
    parameter after the update. Gradients and parameters are compared in canonical names and
    layout (each backend's own rename/transpose rules); Paddle's ``_mean``/``_variance`` are not
    gradients. A model without a head is trained on its output feature map(s), globally
    average-pooled and concatenated along channels, as logits.

    Reference: one of the compared backends (default the first), in float64. An independent
    numpy trainer would need its own backward pass for every op, itself unproven; instead, three
    frameworks written independently (kernels, autodiff, optimizers) must agree to about 1e-12
    in float64, and any convention error in one of them (momentum, decay order, variance
    estimator, eps, a frozen tensor) is 5e-5 or more. The one case this cannot tell apart, the
    reference being wrong, shows as every other backend diverging at the same place first; the
    report says so (``reference_suspect``).

    Bounds: float64 (the proof): a tensor passes when max|a - b| <= rtol x max|ref| (rtol default
    1e-9; measured noise ~1e-12; see ``FLOAT64_RTOL`` and ``FLOOR``). float32: norm-relative
    errors ||a - b|| / ||ref||, reported as measured noise without a verdict (rtol default inf):
    float32 train-mode gradients of correct implementations differ by up to ~0.1.

    Args:
        spec: a ResNetSpec, preset name or spec file (None: the spec stored in ``weights``).
        backends: the backends to run (at least two, or one beside ``reference``; default every
            registered backend, ``rm.backend_names()``).
        steps: optimizer steps (>= 1).
        optimizer: an ``SGD``/``AdamW`` description, or "sgd"/"adamw" with ``DEFAULT_SETTINGS``
            (sgd: lr 0.1, momentum 0.875, weight_decay 2**-10; adamw: lr 1e-3, weight_decay
            2**-7); default "sgd".
        dtype: "float64" (default) or "float32". A float64 Flax model needs JAX's 64-bit mode,
            a process-wide switch this function does not flip: call it inside
            ``with jax.enable_x64(True):`` (or after ``jax.config.update("jax_enable_x64", True)``).
        weights: canonical weights (dict) or a checkpoint file; default ``random_weights(plan, seed)``.
        inputs: the NCHW batch; default standard normal of ``input_shape`` (default (4, C, 33, 47), or
            a larger batch where a BatchNorm would see fewer than ``MIN_BN_VALUES`` values per channel:
            ``default_training_shape``).
        labels: integer class per input; default random from ``seed``.
        input_shape, seed: of the default batch, weights and labels.
        rtol: the relative bound (default 1e-9 in float64, inf in float32).
        reference: the backend compared against (default the first of ``backends``).
    Raises:
        IllConditionedError: the input leaves a train-mode BatchNorm fewer than ``MIN_BN_VALUES``
            values per channel (a ValueError).
    Returns:
        TrainingReport: ``.ok``, ``.first_divergence`` (step, phase, backend, tensor, rel),
        ``.losses``, ``.records``, ``.to_dict()``, ``print(report)``.
    Example:
        >>> with jax.enable_x64(True):
        ...     report = rm.check_training("resnet18", backends=("torch", "paddle", "flax"), steps=3)
        >>> report.ok, report.first_divergence
        (True, None)
    """
    spec, weights = resolve_spec_and_weights(spec, weights, "check_training")
    plan = make_plan(spec)
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if optimizer is None:
        optimizer = DEFAULT_OPTIMIZER
    elif isinstance(optimizer, str):
        if optimizer not in DEFAULT_SETTINGS:
            raise OptimizerError(f"optimizer: unknown optimizer {optimizer!r}; known: {', '.join(DEFAULT_SETTINGS)}")
        optimizer = optimizer_spec(optimizer, **DEFAULT_SETTINGS[optimizer])
    elif not isinstance(optimizer, (SGD, AdamW)):
        raise ValueError(f"optimizer: expected an SGD or AdamW description or 'sgd'/'adamw', got {optimizer!r}")
    if rtol is None:
        rtol = TRAINING_RTOL if dtype == "float64" else math.inf
    elif isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"rtol: expected a number >= 0, got {rtol!r}")
    dropouts = [op for part in plan.parts for op in part.modules if isinstance(op, (Dropout, DropPath)) and op.rate > 0]
    if dropouts:  # found in the plan, so any field that makes one is caught (head.dropout, block.drop_rate, ...)
        raise ValueError(
            f"check_training: {spec.name!r} has train-mode dropout or drop-path ({len(dropouts)} module(s), the "
            f"first {dropouts[0].name} at rate {dropouts[0].rate}); they draw different masks in every framework, "
            "so trainings cannot be compared. Set head.dropout, block.drop_rate and block.drop_path_rate to 0, "
            "e.g. spec.replace(head=HeadSpec(num_classes=..., dropout=0.0))")
    backends = tuple(dict.fromkeys(backends))
    if not backends:
        raise BackendError("check_training: no backends to compare")
    reference = backends[0] if reference is None else reference
    compared = tuple(b for b in backends if b != reference)
    if not compared:
        raise BackendError(f"check_training: only the reference {reference!r} given; list another backend")
    for name in (reference, *compared):
        get_backend(name)  # unknown or uninstalled: fail before any work

    if inputs is None:
        shape = tuple(input_shape) if input_shape is not None else default_training_shape(plan)
        plan.check_input_shape(shape, what="input_shape")
        inputs = np.random.default_rng((seed, 1)).standard_normal(shape)
    elif input_shape is not None and tuple(np.shape(inputs)) != tuple(input_shape):
        raise ValueError(f"inputs have shape {np.shape(inputs)} but input_shape is {tuple(input_shape)}; "
                         "give one of them")
    x = np.asarray(inputs)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"inputs: expected a floating point array, got dtype {x.dtype}")
    plan.check_input_shape(x.shape, what="inputs")
    if x.shape[0] < 2:
        raise ValueError(f"inputs: train-mode BatchNorm needs a batch of at least 2, got shape {x.shape}")
    _check_batchnorm_values(plan, x.shape)
    x = np.ascontiguousarray(x, dtype=dtype)
    y = _labels(plan, labels, x.shape[0], seed)
    weights = random_weights(plan, seed) if weights is None else check_weights(plan, weights)

    # Every model is built before any trains (a backend that cannot build fails fast), then each
    # trains in turn and is dropped; each compared trajectory is compared as soon as it exists and
    # dropped too, so memory holds the models, the reference trajectory and one other, not every
    # backend's (for resnet18 in float64 over three backends, about half the peak).
    built = {name: _build(name, spec, weights, dtype) for name in (reference, *compared)}
    trainable = [n for n, info in plan.params.items() if not info.is_buffer]
    stats = [n for n, info in plan.params.items() if info.is_buffer]
    backward = trainable[::-1]  # gradients appear last layer first
    norm = dtype != "float64"

    def compare_run(name: str, run: _Run) -> dict[tuple[int, str], list[TrainingRecord]]:
        phases: dict[tuple[int, str], list[TrainingRecord]] = {}
        for step in range(steps):
            for phase in PHASES:
                if phase == "running_stats":
                    names, outs, refs = stats, run.weights[step], ref.weights[step]
                elif phase == "loss":
                    names, outs, refs = [LOSS], {LOSS: np.float64(run.losses[step])}, {LOSS: np.float64(ref.losses[step])}
                elif phase == "gradient":
                    names, outs, refs = backward, run.gradients[step], ref.gradients[step]
                else:
                    names, outs, refs = trainable, run.weights[step], ref.weights[step]
                phases[step, phase] = _compare(step, phase, name, names, outs, refs, rtol=rtol, norm=norm)
        return phases

    ref = _train(*built.pop(reference), optimizer, x, y, steps)
    losses = {reference: tuple(ref.losses)}
    compared_phases = {}
    for name in compared:
        run = _train(*built.pop(name), optimizer, x, y, steps)  # the model goes with its entry
        losses[name] = tuple(run.losses)
        compared_phases[name] = compare_run(name, run)
        del run
    del ref
    records = [record for step in range(steps) for phase in PHASES for name in compared
               for record in compared_phases[name][step, phase]]
    return TrainingReport(spec.name, tuple(int(s) for s in x.shape), dtype, optimizer, reference, compared, steps,
                          float(rtol), losses, tuple(records))
