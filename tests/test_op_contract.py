"""Every IR op, alone, in every registered backend and the numpy oracle (docs/NUMERICS.md bounds).

The op types are enumerated from the IR (every dataclass of the module that defines ``plan.Conv``
other than the graph's own), so a new op fails here until it has a case below, a row in every
backend's ``ops.OPS`` table and one in the oracle's ``reference.OPS``. Each case is a stem-only
plan (one Part holding the op, its output tapped) at an odd, non-square size; ops with parameters
get random weights of a random scale. Named parameterless ops run as the framework's module too.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS
from resnet_multi import plan as P
from resnet_multi import reference as R
from resnet_multi import registry
from resnet_multi.parity import BOUNDS

_GRAPH = {"Node", "Part", "Stage", "ParamInfo", "Plan"}


def ir_op_types() -> list[type]:
    """Every op type of the IR, read from the module that defines them."""
    module = sys.modules[P.Conv.__module__]
    return [cls for name, cls in vars(module).items()
            if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
            and not name.startswith("_") and name not in _GRAPH]


C, H, W = 4, 11, 13  # odd and non-square

# op type -> cases: (id, nodes after the input "x", {parameter name: (shape, role)})
_X = (P.INPUT,)
CASES: dict[type, list] = {
    P.Conv: [
        ("3x3s2p1", [P.Node(P.Conv("c", C, 6, 3, stride=2, padding=1), _X, "out")],
         {"c.weight": ((6, C, 3, 3), "conv_weight")}),
        ("grouped_dilated_bias", [P.Node(P.Conv("c", C, 6, 3, padding=2, dilation=2, groups=2, bias=True), _X, "out")],
         {"c.weight": ((6, 2, 3, 3), "conv_weight"), "c.bias": ((6,), "conv_bias")}),
        ("1x1s2", [P.Node(P.Conv("c", C, 8, 1, stride=2), _X, "out")], {"c.weight": ((8, C, 1, 1), "conv_weight")}),
    ],
    P.BatchNorm: [("bn", [P.Node(P.BatchNorm("bn", C, 1e-5, 0.1), _X, "out")],
                   {f"bn.{leaf}": ((C,), role) for leaf, role in (("weight", "bn_weight"), ("bias", "bn_bias"),
                                                                   ("running_mean", "bn_mean"),
                                                                   ("running_var", "bn_var"))})],
    P.Linear: [("linear", [P.Node(P.GlobalAvgPool(), _X, "pooled"), P.Node(P.Linear("fc", C, 5), ("pooled",), "out")],
                {"fc.weight": ((5, C), "linear_weight"), "fc.bias": ((5,), "linear_bias")})],
    P.Dropout: [("dropout", [P.Node(P.Dropout("drop", 0.5), _X, "out")], {})],
    P.Act: [(f"{kind}{'_named' if name else ''}", [P.Node(P.Act(kind, name), _X, "out")], {})
            for kind in P.ACTIVATIONS for name in ("", "act")],
    P.MaxPool: [("3x3s2p1", [P.Node(P.MaxPool(3, 2, 1), _X, "out")], {}),
                ("named", [P.Node(P.MaxPool(3, 2, 1, name="maxpool"), _X, "out")], {})],
    P.AvgPool: [(f"ceil{ceil}_count{count}{'_named' if name else ''}",
                 [P.Node(P.AvgPool(3, 2, 1, ceil_mode=ceil, count_include_pad=count, name=name), _X, "out")], {})
                for ceil in (False, True) for count in (False, True) for name in ("", "avgpool")]
    + [("2x2s2_ceil_resnet_d", [P.Node(P.AvgPool(2, 2, 0, ceil_mode=True, count_include_pad=False), _X, "out")], {})],
    P.GlobalAvgPool: [("flatten", [P.Node(P.GlobalAvgPool(), _X, "out")], {}),
                      ("keepdim", [P.Node(P.GlobalAvgPool(flatten=False), _X, "out")], {}),
                      ("named", [P.Node(P.GlobalAvgPool(flatten=False, name="gap"), _X, "out")], {})],
    P.Flatten: [("flatten", [P.Node(P.Flatten(), _X, "out")], {}),
                ("named", [P.Node(P.Flatten(name="flatten"), _X, "out")], {})],
    P.Add: [("add", [P.Node(P.Act("sigmoid"), _X, "s"), P.Node(P.Add(), ("x", "s"), "out")], {})],
    P.Mul: [("gate", [P.Node(P.GlobalAvgPool(flatten=False), _X, "g"), P.Node(P.Mul(), ("x", "g"), "out")], {})],
    P.Concat: [("concat", [P.Node(P.Act("sigmoid"), _X, "s"), P.Node(P.Concat(), ("x", "s"), "out")], {})],
    P.Slice: [("slice", [P.Node(P.Slice(1, 3), _X, "out")], {})],
    P.AdaptiveAvgPool: [("to3", [P.Node(P.AdaptiveAvgPool(3), _X, "out")], {}),
                        ("to7_named", [P.Node(P.AdaptiveAvgPool(7, name="avgpool"), _X, "out")], {})],
    P.LayerNorm: [(f"{form}", [P.Node(P.LayerNorm("ln", C, 1e-6, form), _X, "out")],
                   {"ln.weight": ((C,), "ln_weight"), "ln.bias": ((C,), "ln_bias")}) for form in P.LAYER_NORM_FORMS]
    + [("vector", [P.Node(P.GlobalAvgPool(), _X, "pooled"), P.Node(P.LayerNorm("ln", C, 1e-6), ("pooled",), "out")],
        {"ln.weight": ((C,), "ln_weight"), "ln.bias": ((C,), "ln_bias")})],
    P.ChannelLinear: [("c_to_6", [P.Node(P.ChannelLinear("fc", C, 6), _X, "out")],
                       {"fc.weight": ((6, C), "linear_weight"), "fc.bias": ((6,), "linear_bias")})],
    P.LayerScale: [(f"shape{len(shape)}", [P.Node(P.LayerScale("gamma", shape), _X, "out")],
                    {"gamma": (shape, "layer_scale")}) for shape in ((C, 1, 1), (C,))],
    P.DropPath: [("eval", [P.Node(P.DropPath("drop_path", 0.3), _X, "out")], {})],
    P.Scale: [("third", [P.Node(P.Scale(1 / 3), _X, "out")], {})],
    P.Interleave: [("interleave", [P.Node(P.Act("sigmoid"), _X, "s"), P.Node(P.Interleave(), ("x", "s"), "out")],
                    {})],
    P.GlobalFilter: [(f"weight{h}x{w}", [P.Node(P.GlobalFilter("filter.complex_weight", C, h, w), _X, "out")],
                      {"filter.complex_weight": ((C, h, w, 2), "complex_weight")})
                     for h, w in ((H, W // 2 + 1), (5, 4))],  # the second is resized (align_corners)
}


def _plan(nodes, params) -> P.Plan:
    spec = rm.get_spec("resnet18").replace(in_channels=C)
    shapes = {P.INPUT: (1, C, H, W)}
    for node in nodes:
        shapes[node.output] = P.op_output(node.op, *[shapes[name] for name in node.inputs])
    out_channels = shapes["out"][1]
    stem = P.Part("stem", "", C, out_channels, tuple(nodes), "out", taps=(("out", "out"),))
    infos = {name: P.ParamInfo(name, shape, role, ("zeros", 0.0)) for name, (shape, role) in params.items()}
    return P.Plan(spec, stem, (), None, None, infos)


def _weights(plan: P.Plan, rng) -> dict[str, np.ndarray]:
    out = {}
    for name, info in plan.params.items():
        scale = 10.0 ** rng.uniform(-1, 1)  # a random scale: a convention that cancels at 1 shows
        value = rng.standard_normal(info.shape) * scale
        if info.role == "bn_var":
            value = np.abs(value) + 0.1
        out[name] = value.astype(np.float32)
    return out


def _cases():
    for op_type in ir_op_types():
        for case_id, nodes, params in CASES.get(op_type, [(None, None, None)]):
            yield pytest.param(op_type, nodes, params, id=f"{op_type.__name__}-{case_id}")


def test_every_ir_op_has_a_case_a_backend_row_and_an_oracle_row():
    types = ir_op_types()
    assert P.Conv in types and P.Slice in types and P.Node not in types
    assert not [t.__name__ for t in types if t not in CASES], "add a case for every IR op"
    assert not [t.__name__ for t in types if t not in R.OPS], "the oracle lacks these ops"
    for name in BACKENDS:
        ops = importlib.import_module(f"{registry.backend_info(name).package}.ops").OPS
        assert not [t.__name__ for t in types if t not in ops], f"{name}: ops.OPS lacks these ops"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_type, nodes, params", list(_cases()))
def test_op_alone_matches_the_oracle(op_type, nodes, params, backend, dtype, request):
    assert nodes is not None, f"no case for IR op {op_type.__name__}"
    if dtype == "float64" and backend == "flax":
        request.getfixturevalue("x64")  # on for this test only: later files run in JAX's default mode
    plan = _plan(nodes, params)
    rng = np.random.default_rng(abs(hash((op_type.__name__, len(nodes)))) % 2**32)
    weights = _weights(plan, rng)
    x = (rng.standard_normal((2, C, H, W)) - 0.5).astype(np.float32)
    x = x.astype(np.float64) if dtype == "float64" else x
    expected = R.reference_forward(plan, weights, x, taps=True, precision=dtype)["out"]
    module = registry.get_backend(backend)
    model = module.build(plan, weights, dtype=dtype)
    actual = module.forward(model, x, taps=True)["out"]
    rtol, atol = BOUNDS[dtype]
    assert actual.shape == expected.shape, f"{backend}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    bound = atol + rtol * float(np.max(np.abs(expected)))
    assert err <= bound, f"{backend} {op_type.__name__} {dtype}: max abs error {err:.3g} > bound {bound:.3g}"
