"""Shared test helpers: the preset and backend matrices come from the zoo and the registry; shared
(cached) weights and oracle outputs; and the few framework idioms that truly differ (``idioms``)."""

from __future__ import annotations

import atexit
import ctypes
import functools
import gc
import os
import shutil
import sys
import tempfile
from dataclasses import replace

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.weights import random_weights

# --------------------------------------------------------------------------- JAX's compile cache
# JAX compiles every new (function, shapes) pair, eager primitives included, and most of the suite's
# Flax time is compilation: the same small models, layers and shapes recur across tests and files,
# and the memory rules below drop the in-memory compiled functions between them. A compilation
# cache on disk, for this run only, makes a recurrence a load of the same executable (keyed by the
# program, the options and the versions) instead of a compile: measured on the Flax idiom tests,
# 69 s cold, 28 s with the cache warm. Nothing a test checks changes; subprocesses share it. Set
# before jax is imported (it reads these at import); a variable already set is left as it is.
if "jax" not in sys.modules and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = tempfile.mkdtemp(prefix="resnet_multi_tests_jax_cache_")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_JAX_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

PRESETS = rm.list_specs()
FULL_SIZE_NEW_FAMILIES = ("convnext_tiny", "hornet_tiny_7x7", "hornet_tiny_gf")
BUILT_PRESETS = [name for name in PRESETS if rm.get_spec(name).block.kind in ("basic", "bottleneck", "basic_1x1",
                                                                                "dense", "ghost")
                 or name in FULL_SIZE_NEW_FAMILIES]
"""The presets the matrices build at full size in every backend. ConvNeXt and HorNet (issue 18)
are there by their smallest members (convnext_tiny, both HorNet tinies); VGG (133-144 M
parameters, most in its classifier) and the larger ConvNeXts and HorNets are checked plan-level
(names, order, parameter counts, summary, spec inference), at reduced width in every backend
(tests/test_modern_families.py) and against torchvision / paddle.vision at full size there, since
building them all in three frameworks would cost the suite minutes and gigabytes for no check
that the smallest member does not make; benchmarks/full_parity.py checks them at full size."""
BACKENDS = rm.backend_names()  # CI installs every backend: an uninstalled one must fail, not skip

ODD_HW = (33, 47)  # odd and non-square: padding and ceil_mode errors show only at such sizes


def odd_input(spec: rm.ResNetSpec, batch: int = 1, hw=ODD_HW, seed: int = 0) -> np.ndarray:
    """A random NCHW float32 input for ``spec`` at an odd, non-square size."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, spec.in_channels, *hw)).astype(np.float32)


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-5, atol: float = 1e-6):
    """fp32 parity bound of docs/NUMERICS.md: max|a - b| <= atol + rtol * max|expected|."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    bound = atol + rtol * float(np.max(np.abs(expected)))
    assert err <= bound, f"{what}: max abs error {err:.3g} > bound {bound:.3g}"


def assert_weights_equal(actual, expected) -> None:
    """``actual`` holds exactly the tensors of ``expected`` (no more, no fewer; torch's
    ``num_batches_tracked`` counters aside), bit for bit (the failure names the tensor)."""
    extra = sorted(n for n in actual if n not in expected and not n.endswith(".num_batches_tracked"))
    missing = sorted(n for n in expected if n not in actual)
    assert not extra and not missing, f"extra tensors {extra[:5]}, missing {missing[:5]}"
    for name, array in expected.items():
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def small(spec: rm.ResNetSpec, divisor: int = 8) -> rm.ResNetSpec:
    """The same architecture and canonical names with 1/divisor of the channels (fast): for checks
    that hold tensor by tensor or name by name, where the channel count proves nothing."""
    stages = tuple(replace(s, channels=max(1, s.channels // divisor)) for s in spec.stages)
    stem = replace(spec.stem, widths=tuple(max(1, w // divisor) for w in spec.stem.widths))
    return spec.replace(stages=stages, stem=stem)


def _jax_x64():
    """JAX computes in float64 only in its 64-bit mode, a process-wide switch (rm.build refuses a
    float64 Flax model without it): on while a test or a file needs it, then as it was, since
    test_native_idioms checks the error without it in the same process."""
    import jax

    with jax.enable_x64(True):
        yield


x64 = pytest.fixture(_jax_x64)  # for one test: ``def test_...(x64)`` or ``request.getfixturevalue("x64")``
# for a whole file: ``pytestmark = pytest.mark.usefixtures("x64_for_the_file")``
x64_for_the_file = pytest.fixture(_jax_x64, scope="module")


@pytest.fixture(params=PRESETS)
def preset(request) -> rm.ResNetSpec:
    return rm.get_spec(request.param)


# --------------------------------------------------------------------------- shared, cached data
# Weights and oracle outputs are pure functions of their arguments, so tests share them instead of
# recomputing them (random_weights of resnet152 draws 60 million numbers). The caches are small
# (maxsize): the matrix tests run preset-major, and full-size weights are large.


@functools.lru_cache(maxsize=1)
def preset_weights(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``random_weights`` of a preset (random BN statistics, no zero-init). Callers must not
    modify the arrays (copy first)."""
    weights = random_weights(rm.make_plan(rm.get_spec(name)), seed=seed)
    for array in weights.values():
        array.flags.writeable = False  # a test that modifies shared weights fails loudly
    return weights


@functools.lru_cache(maxsize=1)
def preset_oracle(name: str, hw: tuple[int, int] = ODD_HW, batch: int = 1):
    """Weights, input and float64 oracle taps of a preset, shared by its backends."""
    spec = rm.get_spec(name)
    weights = preset_weights(name, 0)
    x = np.random.default_rng(1).standard_normal((batch, spec.in_channels, *hw)).astype(np.float32)
    return spec, weights, x, rm.reference_forward(rm.make_plan(spec), weights, x, taps=True)


# --------------------------------------------------------------------------- framework idioms
# What a user of each framework writes differently, and nothing else: a test body is written once
# and asks ``idioms(backend)`` for these. A backend without an entry fails with a message saying
# where to add one (never a silent fall-through to some other framework's idiom).


class TorchIdioms:
    name = "torch"

    @staticmethod
    def train_call(model, x_nchw: np.ndarray, seed: int) -> np.ndarray:
        """One train-mode call, with the framework's dropout RNG seeded; NCHW / 2-D out."""
        import torch

        torch.manual_seed(seed)
        return model.train()(torch.from_numpy(x_nchw)).detach().numpy()

    @staticmethod
    def named_layers(model) -> dict:
        """Every module by dotted name, as the framework lists them."""
        return dict(model.named_modules())

    @staticmethod
    def dropout_call(layer, x: np.ndarray) -> np.ndarray:
        import torch

        return layer.train()(torch.from_numpy(x)).numpy()

    @staticmethod
    def optimizer_type(name: str):
        import torch

        return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


class PaddleIdioms:
    name = "paddle"

    @staticmethod
    def train_call(model, x_nchw: np.ndarray, seed: int) -> np.ndarray:
        import paddle

        model.train()
        paddle.seed(seed)
        return model(paddle.to_tensor(x_nchw)).numpy()

    @staticmethod
    def named_layers(model) -> dict:
        return dict(model.named_sublayers(include_self=True))

    @staticmethod
    def dropout_call(layer, x: np.ndarray) -> np.ndarray:
        import paddle

        layer.train()
        return layer(paddle.to_tensor(x)).numpy()

    @staticmethod
    def optimizer_type(name: str):
        import paddle

        return {"sgd": paddle.optimizer.Momentum, "adamw": paddle.optimizer.AdamW}[name]


class FlaxIdioms:
    name = "flax"

    @staticmethod
    def train_call(model, x_nchw: np.ndarray, seed: int) -> np.ndarray:
        from flax import nnx

        model.train()
        out = np.asarray(model(x_nchw.transpose(0, 2, 3, 1), rngs=nnx.Rngs(dropout=seed)))
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out  # Flax computes in NHWC

    @staticmethod
    def named_layers(model) -> dict:
        from flax import nnx

        return {".".join(map(str, path)): m for path, m in nnx.iter_modules(model)}

    @staticmethod
    def dropout_call(layer, x: np.ndarray) -> np.ndarray:
        from flax import nnx

        return np.asarray(layer(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))

    @staticmethod
    def optimizer_type(name: str):
        from flax import nnx

        return nnx.Optimizer  # one type for every optax transformation


IDIOMS = {cls.name: cls for cls in (TorchIdioms, PaddleIdioms, FlaxIdioms)}


def idioms(backend: str):
    """The framework idioms of ``backend`` (see TorchIdioms for what each provides)."""
    if backend not in IDIOMS:
        raise KeyError(f"tests/conftest.py has no idioms for backend {backend!r}: add a class like TorchIdioms")
    return IDIOMS[backend]



# --------------------------------------------------------------------------- memory between tests
# The suite has a memory budget (README): one process holds three frameworks and, one after the
# other, full-size models of up to 140 M parameters. Python frees a test's models when it ends, but
# glibc's malloc keeps the freed heap pages (measured: after a full-size resnet152 in Flax, 1.9 GB
# resident after gc.collect, 1.0 GB after malloc_trim), so resident memory would be the sum of the
# run's high-water marks. Giving the pages back after each test costs milliseconds; a full garbage
# collection (about 0.2 s with the frameworks loaded) runs only when memory grew since the last one.


def _resident_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:  # not Linux: nothing to measure
        return 0.0


def _malloc_trim():
    """glibc's malloc_trim(0) (every arena), or nothing where the C library has none."""
    try:
        libc = ctypes.CDLL(None)
        return libc.malloc_trim if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def _return_large_blocks_at_once():
    """glibc serves an allocation of at least M_MMAP_THRESHOLD bytes by its own mmap, which free
    gives straight back to the system; but by default the threshold grows to the largest block
    freed so far (up to 32 MB), after which large arrays come from the heap and their pages stay
    resident until a trim. Fixing it keeps resident memory near live memory inside a test, where
    the trim after it cannot help."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MB, fixed


_return_large_blocks_at_once()
_COLLECT_AFTER_GROWTH_MB = 256
_resident_after_collect = [0.0]


def _drop_compiled_functions():
    """JAX's compiled functions and torch.compile's graphs: each holds what it was compiled for
    (measured: a file's nnx.jit trainings kept 1.5 GB of compiled steps until the file ended)."""
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


# The tests whose own peak is largest run first, while the process holds least. The frameworks
# keep part of what a test used for the process's life (their allocators, kernels and programs;
# measured: 1.1 GB resident after the first test, 2.4 GB by the last), and a test's peak is that
# plus its own: the README's snippets add 2.0 GB, paddle.vision's and torchvision's VGG-BN beside
# ours 1.7-2.0 GB, the d2l resnet18 float64 training parity over three backends 1.4 GB. Last in
# the run they peaked at 3.6-4.2 GB. Order only: every test still runs, alone as before.
_LARGEST_PEAKS_FIRST = (
    "tests/test_readme.py::test_python_snippets_run_in_order",
    "tests/test_modern_families.py::test_paddle_vision_vgg_loads_as_it_is",
    "tests/test_modern_families.py::test_torchvision_state_dicts_load_strict_and_logits_are_identical",
    "tests/test_training.py::test_small_presets_pass_training_parity_in_float64",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(_LARGEST_PEAKS_FIRST) if item.nodeid.startswith(prefix)), -1)

    first = sorted((item for item in items if rank(item) >= 0), key=rank)  # stable: same order within one
    moved = {id(item) for item in first}
    items[:] = first + [item for item in items if id(item) not in moved]


def _freeze_survivors() -> None:
    """Move every object alive now into Python's permanent generation, which no collection
    traverses, automatic or ``gc.collect()``. One process holds three frameworks' modules (over
    500,000 objects), and some code collects often: Paddle's SOT to_static calls ``gc.collect()``
    after translating each frame, 62 times for our resnet18; with torch and jax imported beside
    Paddle those collections took 12.6 s of a 16.3 s first step, and 2.3 s with them frozen.
    Nothing is lost: an object frozen here that becomes garbage in a later test is collected by
    the unfreeze-and-collect after its file (``gc.freeze`` only moves lists)."""
    gc.freeze()


@pytest.fixture(autouse=True)
def _give_freed_memory_back():
    yield
    if _resident_mb() - _resident_after_collect[0] > _COLLECT_AFTER_GROWTH_MB:
        _drop_compiled_functions()  # rarely reused by the next test: a new model compiles anew anyway
        # models in reference cycles (framework hooks) are freed only by a collection; this test's
        # are not frozen yet, so the frozen objects need not be traversed for them
        gc.collect()
        _resident_after_collect[0] = _resident_mb()
    _freeze_survivors()
    if _TRIM is not None:
        _TRIM(0)
        _resident_after_collect[0] = min(_resident_after_collect[0], _resident_mb())


@pytest.fixture(scope="module", autouse=True)
def _release_caches_after_each_file(request):
    """After each test file: drop what a file cached for its own tests and what the frameworks keep
    for the process's life otherwise: the file's (and conftest's) memoized results, JAX's compiled
    functions and torch.compile's graphs (both hold the models they were compiled for), one per
    model structure and rarely shared between files. Measured without this: memory after the suite's
    largest files stayed 0.3-0.9 GB above what it was before them."""
    yield
    for module in (request.module, sys.modules[__name__]):
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    _drop_compiled_functions()
    gc.unfreeze()  # this collection sees every object (see _freeze_survivors)
    gc.collect()
    _freeze_survivors()
    if _TRIM is not None:
        _TRIM(0)
    _resident_after_collect[0] = _resident_mb()
    jax = sys.modules.get("jax")
    if jax is not None and jax.config.jax_enable_x64 and not os.environ.get("JAX_ENABLE_X64"):
        pytest.fail(f"{request.module.__name__} left JAX's 64-bit mode on, so later files would not run in "
                    "JAX's default mode: turn it on with the x64 fixtures, which turn it off again", pytrace=False)
