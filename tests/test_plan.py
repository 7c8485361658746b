"""The plan and the summary: architecture arithmetic, parameter counts, shapes, MACs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi import plan as P

# torchvision's documented parameter counts (torchvision.models docs, "num_params").
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240, "resnext50_32x4d": 25_028_904,
}


@pytest.mark.parametrize("name, count", TORCHVISION_PARAMS.items())
def test_parameter_counts_equal_torchvision(name, count):
    assert rm.summary(name).total_params == count


def test_resnet50_macs_and_shapes():
    s = rm.summary("resnet50", input_shape=(1, 3, 224, 224))
    assert 4.05e9 < s.total_macs < 4.15e9  # the usual "4.1 GFLOPs" (multiply-accumulates)
    assert s.output_shapes["stem"] == (1, 64, 56, 56)
    assert [s.output_shapes[f"layer{i}"] for i in range(1, 5)] == [
        (1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]
    assert s.output_shapes["logits"] == (1, 1000)
    assert "25.56 M parameters" in str(s)


def _chain_to(block: P.Part, value: str) -> list:
    """The ops of the single-input chain from the block's input to ``value``, in order."""
    producers = {node.output: node for node in block.nodes}
    ops = []
    while value != P.INPUT:
        node = producers[value]
        ops.insert(0, node.op)
        value = node.inputs[0]
    return ops


def _branches(block: P.Part) -> tuple[list, list]:
    """(main path, shortcut) of a residual block: the chains into its Add."""
    (add,) = [node for node in block.nodes if isinstance(node.op, P.Add)]
    return _chain_to(block, add.inputs[0]), _chain_to(block, add.inputs[1])


def test_resnet45_is_paddleocr_shaped():
    s = rm.summary("resnet45", input_shape=(2, 3, 32, 100))
    assert s.output_shapes["layer5"] == (2, 512, 8, 25)  # strides 2,1,2,1,1: /4 overall
    p = rm.make_plan(rm.get_spec("resnet45"))
    assert "fc.weight" not in p.params and p.out_channels == 512
    first = p.stages[1].blocks[0]  # layer2: 32 -> 64 channels at stride 1 still projects
    main, shortcut = _branches(first)
    assert [op.name for op in shortcut] == ["layer2.0.downsample.0", "layer2.0.downsample.1"]
    conv1, conv2 = [op for op in main if isinstance(op, P.Conv)]
    assert (conv1.kernel_size, conv2.kernel_size, conv2.stride) == (1, 3, 1)
    assert _branches(p.stages[0].blocks[0])[0][3].stride == 2  # the stride is on the 3x3
    std = p.params["layer1.0.conv2.weight"].init[1]
    assert std == pytest.approx(np.sqrt(2.0 / (32 * 9)))  # KaimingNormal, fan_in


def test_bottleneck_v1_puts_stride_on_first_1x1():
    spec = rm.get_spec("resnet50")
    v1 = spec.replace(block=rm.BlockSpec(kind="bottleneck", stride_on="1x1"))
    convs = [op for op in _branches(rm.make_plan(v1).stages[1].blocks[0])[0] if isinstance(op, P.Conv)]
    assert [c.stride for c in convs] == [2, 1, 1]
    convs = [op for op in _branches(rm.make_plan(spec).stages[1].blocks[0])[0] if isinstance(op, P.Conv)]
    assert [c.stride for c in convs] == [1, 2, 1]
    assert rm.summary(v1, (1, 3, 65, 65)).output_shapes["logits"] == (1, 1000)


def test_dilation_replaces_stride_like_torchvision():
    spec = rm.get_spec("resnet50")
    stages = tuple(s if i < 2 else rm.StageSpec(s.depth, s.channels, s.stride, dilate=True)
                   for i, s in enumerate(spec.stages))
    p = rm.make_plan(spec.replace(stages=stages))
    assert p.shapes((1, 3, 224, 224))["layer4"] == (1, 2048, 28, 28)  # output stride 8
    conv2 = lambda block: _branches(block)[0][3]  # noqa: E731
    # torchvision: a dilated stage's first block keeps the previous dilation
    assert [(conv2(b).dilation, conv2(b).padding) for b in p.stages[2].blocks[:2]] == [(1, 1), (2, 2)]
    assert [(conv2(b).dilation, conv2(b).padding) for b in p.stages[3].blocks[:2]] == [(2, 2), (4, 4)]
    assert _branches(p.stages[3].blocks[0])[1][0].stride == 1


def test_resnet_d_avgpool_shortcut():
    p = rm.make_plan(rm.get_spec("resnet50d"))
    assert [n for n in p.params if n.startswith("conv1.") and p.params[n].role == "conv_weight"] == [
        "conv1.0.weight", "conv1.3.weight", "conv1.6.weight"]  # timm's deep-stem names
    assert p.params["conv1.4.running_var"].shape == (32,) and p.params["bn1.weight"].shape == (64,)
    # stage 1 has stride 1: timm uses no pool there, names stay downsample.1/.2
    assert not any(isinstance(op, P.AvgPool) for op in _branches(p.stages[0].blocks[0])[1])
    pool, conv, bn = _branches(p.stages[1].blocks[0])[1]
    # timm's downsample.0 is an AvgPool2d module: so is ours, and downsample runs in order when called
    assert pool == P.AvgPool(2, 2, 0, ceil_mode=True, count_include_pad=False, name="layer2.0.downsample.0")
    assert (conv.name, conv.stride, bn.name) == ("layer2.0.downsample.1", 1, "layer2.0.downsample.2")
    assert pool.out_size(33) == 17 and pool.out_size(1) == 1


def test_shortcut_always_and_conv_without_bn():
    spec = rm.get_spec("resnet18").replace(shortcut=rm.ShortcutSpec(kind="conv", when="always"))
    p = rm.make_plan(spec)
    assert "layer1.0.downsample.0.weight" in p.params  # projects though shapes match
    assert "layer1.0.downsample.1.weight" not in p.params and "layer1.1.downsample.0.weight" not in p.params
    d2l = rm.make_plan(rm.get_spec("d2l_resnet18"))
    assert "layer2.0.downsample.0.bias" in d2l.params and "layer1.0.downsample.0.weight" not in d2l.params
    assert d2l.params["conv1.weight"].shape == (64, 1, 7, 7) and d2l.params["fc.weight"].shape == (10, 512)


def test_squeeze_excitation_params_and_taps():
    spec = rm.get_spec("resnet50").replace(block=rm.BlockSpec(kind="bottleneck", se_ratio=1 / 16))
    p = rm.make_plan(spec)
    assert p.params["layer1.0.se.fc1.weight"].shape == (16, 256, 1, 1)
    assert p.params["layer4.2.se.fc2.bias"].shape == (2048,)


def test_out_indices_and_tap_names():
    spec = rm.get_spec("resnet18").replace(head=None, out_indices=(1, 3))
    p = rm.make_plan(spec)
    assert p.output_names() == ("layer2", "layer4")
    assert p.tap_names[:4] == ("stem", "layer1.0", "layer1.1", "layer1")
    assert "logits" not in p.tap_names
    assert rm.make_plan(rm.get_spec("resnet18")).tap_names[-2:] == ("pre_logits", "logits")


def test_zero_init_last_bn():
    spec = rm.get_spec("resnet50").replace(init=rm.InitSpec(zero_init_last_bn=True))
    p = rm.make_plan(spec)
    assert p.params["layer1.0.bn3.weight"].init == ("zeros", 0.0)
    assert p.params["layer1.0.bn2.weight"].init == ("ones", 0.0)
    assert p.params["layer1.0.downsample.1.weight"].init == ("ones", 0.0)


@pytest.mark.parametrize("shape, message", [
    ((3, 224, 224), "expected a 4-D NCHW array"),
    ((1, 1, 224, 224), "expected 3 input channel(s)"),
    ((1, 3, 0, 47), "is too small"),
])
def test_summary_rejects_bad_input_shape(shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rm.summary("resnet50", input_shape=shape)


def _run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its stdout, stripped."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_import_loads_no_framework():
    code = (
        "import sys, resnet_multi as rm\n"
        "rm.summary('resnet50'); rm.list_specs(); rm.make_plan(rm.get_spec('resnet45'))\n"
        "rm.available_backends()\n"
        "loaded = [m for m in ('torch', 'paddle', 'jax', 'flax', 'tensorflow') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    assert _run_fresh(code) == "clean"


def test_numpy_runs_only_when_arrays_are_needed():
    """numpy is most of the import's cost (issue 6: `import resnet_multi` < 0.1 s), so specs, plans
    and summaries must not execute it; the first call that needs arrays loads it transparently."""
    code = (
        "import json, sys, resnet_multi as rm\n"
        "ran = lambda: any(name.startswith('numpy.') for name in sys.modules)\n"
        "spec = rm.ResNetSpec.from_dict(json.loads(rm.get_spec('resnet50').to_json()))\n"
        "rm.summary(spec); rm.list_specs(); rm.make_plan(spec)\n"
        "assert not ran(), sorted(m for m in sys.modules if m.startswith('numpy'))\n"
        "weights = rm.weights.init_weights(rm.make_plan(rm.get_spec('resnet18')), seed=0)\n"
        "assert ran() and type(weights['fc.weight']).__name__ == 'ndarray'\n"
        "print('lazy')\n"
    )
    assert _run_fresh(code) == "lazy"


def test_numpy_first_used_from_many_threads_at_once():
    """The first use of the lazily imported numpy may come from several threads; each must see
    numpy whole (importlib's LazyLoader let 7 of 8 threads see a half-initialised module on
    Python 3.11: CPython gh-114763)."""
    code = (
        "import threading, resnet_multi as rm\n"
        "plan = rm.make_plan(rm.get_spec('resnet18'))\n"
        "barrier, errors = threading.Barrier(8), []\n"
        "def first_use():\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        rm.weights.init_weights(plan, seed=0)\n"
        "    except Exception as error:\n"
        "        errors.append(repr(error))\n"
        "threads = [threading.Thread(target=first_use) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert not errors, errors\n"
        "print('whole')\n"
    )
    assert _run_fresh(code) == "whole"


# --------------------------------------------------------------------------- in place and freeing


def _conv(name: str, in_c: int = 4, out_c: int = 3) -> P.Conv:
    return P.Conv(f"b.{name}", in_c, out_c, 1, 1, 0, 1, 1, False)


def _ghost_like(g: P._Graph, extra_reader: bool = False) -> tuple[str, str]:
    """x -> a = conv(x), b = conv(a), c = concat(a, b)[:, :4] + x (GhostNet's ghost2 + identity)."""
    a = g.add(_conv("a"), P.INPUT)
    c = g.add(P.Concat(), a, g.add(_conv("b", 3, 3), a))
    if extra_reader:
        c2 = g.add(_conv("c", 6, 4), c)
    sliced = g.add(P.Slice(0, 4), c)
    out = g.add(P.Add(), sliced, P.INPUT)
    return (g.add(P.Add(), out, c2) if extra_reader else out), c


@pytest.mark.parametrize("case", ["free", "base read again", "base tapped", "slice of the input"])
def test_inplace_add_writes_through_a_slice_only_when_its_base_is_free(case):
    g = P._Graph("b", "b.", 4)
    if case == "slice of the input":
        out = g.add(P.Add(), g.add(P.Slice(0, 4), P.INPUT), g.add(_conv("a", 4, 4), P.INPUT))
        taps = ()
    else:
        out, concat = _ghost_like(g, extra_reader=case == "base read again")
        taps = ((concat, "concat"),) if case == "base tapped" else ()
    part = g.part(out, 4, taps)
    first_add = next(node for node in part.nodes if isinstance(node.op, P.Add))
    assert first_add.inplace is (case == "free")


@pytest.mark.parametrize("name", ["resnet50", "ghostnet_100", "ghostnet_050"])
def test_every_residual_add_is_in_place_like_the_native_models(name):
    # torchvision's `out += identity` and timm's `x += self.shortcut(shortcut)`: an out-of-place
    # add allocates a batch-sized tensor per block (ghostnet_100 batch 8 measured 1.18x timm's time)
    adds = [node for stage in rm.make_plan(rm.get_spec(name)).stages for block in stage.blocks
            for node in block.nodes if isinstance(node.op, P.Add)]
    assert adds and all(node.inplace for node in adds)


@pytest.mark.parametrize("name", ["resnet50", "ghostnet_100", "densenet121", "resnet50d"])
def test_walk_holds_exactly_the_values_still_to_be_read(name):
    """At every node the walk keeps alive only what a later node reads (and the caller's input):
    a value held to the part's end is memory the framework's own model has already reused."""
    import weakref

    from resnet_multi.walk import run_part

    class Value:
        pass

    alive: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
    seen: list[set[str]] = []

    def apply(node, *inputs):
        seen.append(set(alive.keys()))
        out = alive[node.output] = Value()
        return out

    plan = rm.make_plan(rm.get_spec(name))
    for part in [plan.stem, *(b for s in plan.stages for b in s.blocks[:2]), plan.head]:
        seen.clear()
        x = alive[P.INPUT] = Value()
        run_part(part, x, apply)
        for i, node in enumerate(part.nodes):
            made = {P.INPUT} | {earlier.output for earlier in part.nodes[:i]}
            still_read = made & {v for later in part.nodes[i:] for v in later.inputs}
            previous = {part.nodes[i - 1].output} if i else set()  # the walk's local for the last output
            assert seen[i] == (still_read | previous | {P.INPUT}), (part.name, i)


def test_a_block_calls_its_one_relu_module_at_each_of_torchvisions_places():
    """torchvision's Bottleneck has one ``relu`` module, called after bn1, bn2 and the add; the
    plan names all three calls after it, and every value the walk makes keeps a name of its own
    (the block's tap is its last value, not the first relu's)."""
    block = rm.make_plan(rm.get_spec("resnet50")).stages[0].blocks[0]
    calls = block.named_functions["layer1.0.relu"]
    assert len(calls) == 3 and [node.inputs[0] for node in calls][:2] == ["layer1.0.bn1", "layer1.0.bn2"]
    assert isinstance(block.nodes[-1].op, P.Act) and block.nodes[-1] is calls[-1]
    assert block.taps == ((block.output, "layer1.0"),) and block.output == calls[-1].output
    assert len({node.output for node in block.nodes}) == len(block.nodes)
