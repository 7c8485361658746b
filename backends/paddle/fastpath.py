"""Paddle's inference fast path and deployment export (optional hooks of the backend contract,
used by resnet_multi.inference / resnet_multi.export). BatchNorm folding is done by the core;
these only add what is Paddle's own: the Paddle Inference engine and ``paddle.jit.save``."""

from __future__ import annotations

import os
import tempfile
import warnings

import paddle
from paddle import nn
from paddle.jit.dy2static.program_translator import StaticFunction
from paddle.nn import functional as F

from resnet_multi import plan as P

from .model import Network


class _BiasConv2D(nn.Conv2D):
    """``nn.Conv2D`` whose bias is added as a (C, 1, 1) tensor. Paddle's own adds it reshaped to
    (1, C, 1, 1), and that broadcast is about twice as slow on CPU (Paddle 3.3): with every
    BatchNorm folded into a conv bias, resnet50 ran markedly slower than paddle.vision's model
    without this, and about as fast with it. Same parameters and names, same result."""

    def forward(self, x):
        out = F.conv2d(x, self.weight, None, self._stride, self._padding, self._dilation, self._groups,
                       self._data_format)
        return out + self.bias.reshape([-1, 1, 1])


class InferenceNetwork(Network):
    """The Paddle fast path (``rm.build(spec, "paddle", inference=True)``): a BatchNorm-folded
    ``Network`` whose eval-mode calls run as one static program under Paddle Inference with oneDNN,
    Paddle's own deployment engine.

    Why: Paddle's dynamic-graph CPU convolutions do not use oneDNN, so folding BatchNorm alone
    leaves the dygraph model as slow as paddle.vision's (benchmarks/RESULTS.md); the same
    program under Paddle Inference is several times faster (benchmarks/RESULTS.md), within the parity bound of the dygraph model.

    The engine is made on the first call that can use it, from the weights the model holds then
    (``paddle.jit.save`` of this layer to a temporary directory, then a predictor with dynamic
    batch and image size). A model with HorNet's global filter gets a predictor for the image size
    of the call instead, and a new one when that size changes: the filter's FFT lengths and the
    resize of its weight are fixed in a static program. The engine holds its own copy of the weights and
    runs on every core this process may use (``os.sched_getaffinity``, not ``OMP_NUM_THREADS``).
    Calls that need the layers themselves run the ordinary dygraph forward: ``taps=True``, train
    mode, an input that wants gradients or is not float32 on the CPU, a parameter that wants
    gradients, a forward hook on any sublayer, a static-graph program being built (AST
    ``to_static``), or after ``paddle.jit.to_static(model)``. (Under the default SOT
    ``to_static`` of a model that contains this one, the engine runs through a graph break, with
    the same outputs.) ``set_state_dict``, ``rm.import_weights`` and ``train()`` drop the engine,
    so the next eval call makes a new one; after assigning a parameter directly, call
    ``model.drop_engine()``. If the engine cannot be made, the model warns and stays on the
    dygraph forward until ``drop_engine()``. Copies and pickles leave the engine out.
    """

    _engine = None  # the paddle.inference predictor, made on first use
    _engine_image_size = None  # (H, W) the engine was made for, or None: any size
    _image_sized = None  # whether the static program depends on the image size; read once from the plan
    _engine_failed = False

    def _needs_layers(self, x, taps: bool) -> bool:
        if (taps or self.training or self._engine_failed or isinstance(self.forward, StaticFunction)
                or not paddle.in_dynamic_mode() or not isinstance(x, paddle.Tensor)
                or not x.place.is_cpu_place() or x.dtype != paddle.float32
                or (paddle.is_grad_enabled() and not x.stop_gradient)):
            return True
        return any(layer._forward_pre_hooks or layer._forward_post_hooks
                   for layer in self.sublayers(include_self=True)) or \
            any(not param.stop_gradient for param in self.parameters())

    def __call__(self, x, taps: bool = False):
        if self._needs_layers(x, taps):
            return super().__call__(x, taps=taps)
        if self._image_sized is None:
            self._image_sized = _sized_by_image(self.plan)
        image_size = tuple(x.shape[2:]) if self._image_sized else None
        if self._engine is not None and self._engine_image_size != image_size:
            self._engine = None  # made for another image size
        engine = self._engine if self._engine is not None else self._make_engine(image_size)
        if engine is None:
            return super().__call__(x, taps=taps)
        # the predictor reuses its output buffers on the next run: hand out copies
        outputs = [out.clone() for out in engine.run([x])]
        return outputs if (not self._has_head and self._out_indices is not None) else outputs[0]

    def _weights_changed(self) -> None:
        self.drop_engine()  # it holds the old weights

    def drop_engine(self) -> None:
        """Forget the engine (after changing weights in place); the next eval call makes a new one."""
        self._engine = None
        self._engine_failed = False

    def set_state_dict(self, *args, **kwargs):
        self.drop_engine()
        return super().set_state_dict(*args, **kwargs)

    set_dict = load_dict = set_state_dict

    def train(self, *args, **kwargs):
        self.drop_engine()  # training changes the weights the engine copied
        return super().train(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())  # Layer returns its own __dict__: copy before editing
        state.pop("_engine", None)  # a predictor cannot be copied or pickled; remade on demand
        return state

    def _make_engine(self, image_size: tuple[int, int] | None = None):
        from paddle import inference

        try:
            with tempfile.TemporaryDirectory() as tmp:
                prefix = os.path.join(tmp, "model")
                channels = self.plan.spec.in_channels
                spatial = list(image_size) if image_size is not None else [None, None]
                _save_static(self, prefix, paddle.static.InputSpec([None, channels, *spatial], "float32", "x"))
                config = inference.Config(prefix + EXPORT_SUFFIX, prefix + ".pdiparams")
                config.disable_gpu()
                config.enable_mkldnn()
                config.disable_glog_info()
                # Paddle Inference defaults to one thread; use the cores this process may run on
                config.set_cpu_math_library_num_threads(_usable_cores())
                engine = inference.create_predictor(config)  # reads the files: the directory can go
        except Exception as error:  # noqa: BLE001 - any failure: say why, keep the dygraph forward
            self._engine_failed = True
            warnings.warn(f"paddle inference model: Paddle Inference engine unavailable ({type(error).__name__}: "
                          f"{error}); running the dygraph forward instead", RuntimeWarning, stacklevel=3)
            return None
        self._engine, self._engine_image_size = engine, image_size
        return engine


def _sized_by_image(plan) -> bool:
    """Whether the plan's static program depends on the image size (HorNet's global filter: its
    FFT lengths and its weight's resize), so that an engine serves one image size only."""
    return any(isinstance(op, P.GlobalFilter) for part in plan.parts for op in part.ops)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def optimize(model: Network) -> InferenceNetwork:
    """Eval-only extras for a (BatchNorm-folded) model: it becomes an ``InferenceNetwork`` (same
    layers and state; eval calls run under Paddle Inference), convs with bias use
    ``_BiasConv2D``'s faster bias add for the dygraph forward, parameters need no gradient. The
    model stays an ``nn.Layer``, so ``paddle.jit.to_static`` and ``paddle.jit.save`` take it as it is."""
    for layer in model.sublayers():
        if type(layer) is nn.Conv2D and layer.bias is not None:
            layer.__class__ = _BiasConv2D  # same state; only forward differs
    for param in model.parameters():
        param.stop_gradient = True
    model.__class__ = InferenceNetwork  # same state; only calls differ
    model.eval()
    return model


EXPORT_SUFFIX = ".json"


def _save_static(model: Network, prefix: str, input_spec) -> list[str]:
    """``paddle.jit.save`` with one input; returns the paths written, or says what Paddle wrote instead."""
    paddle.jit.save(model, prefix, input_spec=[input_spec])
    written = [prefix + suffix for suffix in (EXPORT_SUFFIX, ".pdiparams")]
    missing = [path for path in written if not os.path.exists(path)]
    if missing:  # another Paddle version writing another layout (e.g. .pdmodel): say so
        raise RuntimeError(f"paddle.jit.save did not write {', '.join(missing)}; found "
                           f"{', '.join(sorted(os.listdir(os.path.dirname(prefix) or '.')))}")
    return written


def export_model(model: Network, prefix: str, input_shape: tuple[int, ...]) -> list[str]:
    """Save ``model`` as a static inference model with ``paddle.jit.save``: ``<prefix>.json`` (the
    PIR program) and ``<prefix>.pdiparams``, loadable with ``paddle.jit.load(prefix)`` or Paddle
    Inference (``paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")``). One input
    ``x``, NCHW float32 of ``input_shape`` with a dynamic batch size. ``model`` is not changed.
    Returns the paths written."""
    return _save_static(model, prefix, paddle.static.InputSpec([None, *input_shape[1:]], "float32", "x"))


InferenceResNet = InferenceNetwork
"""The inference model class's first name, kept so existing ``isinstance`` checks work."""
