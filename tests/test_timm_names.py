"""timm's ConvNeXt names (issue 18): the same tensors as torchvision's ``convnext_*``, under timm's
module names (``stem.0``, ``stages.1.downsample.1``, ``stages.2.blocks.3.mlp.fc1``, ``head.fc``) and
with the layer scale as a vector (``gamma``, (C,)) where torchvision's ``layer_scale`` is (C, 1, 1).

The ConvNeXt family declares them as naming scheme "timm" (``Plan.aliases``, ``Plan.param_aliases``,
``Plan.alias_shapes``): ``rm.build(weights=file)``, ``rm.import_weights``, the torch model's
``load_state_dict``, ``rm.convert`` and ``rm.inspect_file`` read them as they are, all or nothing, and
``convert(..., naming="timm")`` writes them. The reference is timm's own model: the reduced one
(``depths``, ``dims``) for everything but what needs the preset's full size (spec inference and
inspect's preset match).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import resnet_multi as rm
from resnet_multi.cli import main

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 32, 64)


def _timm(depths=DEPTHS, dims=DIMS, num_classes=10, **kwargs) -> torch.nn.Module:
    """timm's ConvNeXt with random layer scales and LayerNorm affines of O(1), so every branch counts."""
    torch.manual_seed(11)
    model = timm.create_model("convnext_tiny", pretrained=False, depths=depths, dims=dims,
                              num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    return model.eval()


def _small_spec() -> rm.ResNetSpec:
    """convnext_tiny's structure at timm's reduced depths and widths (``_timm``)."""
    data = rm.get_spec("convnext_tiny").to_dict()
    data["name"], data["stem"]["widths"], data["head"]["num_classes"] = "convnext_small_widths", [DIMS[0]], 10
    for stage, depth, width in zip(data["stages"], DEPTHS, DIMS, strict=True):
        stage["depth"], stage["channels"] = depth, width
    return rm.ResNetSpec.from_dict(data)


def _canonical(spec: rm.ResNetSpec, state: dict) -> dict[str, np.ndarray]:
    """timm's tensors under torchvision's names and shapes, by the plan's own table."""
    plan = rm.make_plan(spec)
    of = {timm_name: name for name, timm_name in plan.native_names("timm").items()}
    return {of[k]: v.numpy().reshape(plan.params[of[k]].shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(spec, timm's model, its state_dict saved by torch.save, an odd input)."""
    model = _timm()
    path = tmp_path_factory.mktemp("timm") / "convnext_small_widths.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 67, 45, generator=torch.Generator().manual_seed(2))
    return _small_spec(), model, path, x


def test_the_timm_scheme_is_timms_state_dict_in_its_order():
    """Every canonical parameter has timm's name, in timm's registration order and shape."""
    spec, model = _small_spec(), _timm()
    plan = rm.make_plan(spec)
    names = plan.native_names("timm")
    state = model.state_dict()
    assert [names[n] for n in plan.params] == list(state)
    assert all(plan.shape_in("timm", n) == tuple(state[names[n]].shape) for n in plan.params)
    assert plan.shape_in("timm", "features.1.0.layer_scale") == (DIMS[0],)
    assert plan.params["features.1.0.layer_scale"].shape == (DIMS[0], 1, 1)
    assert plan.scheme_of(state) == "timm" and plan.scheme_of(plan.params) is None


@pytest.mark.parametrize("backend", ["torch", "paddle", "flax"])
def test_a_timm_file_builds_every_backend(small, backend):
    """rm.build(weights=timm's file): the canonical weights are timm's tensors, bit for bit."""
    spec, model, path, x = small
    ours = rm.build(spec, backend=backend, weights=path)
    expected = _canonical(spec, model.state_dict())
    exported = rm.export_weights(ours)
    assert list(exported) == list(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(exported[name], array, err_msg=name)
    if backend == "torch":  # eval mode, an odd size: timm's logits, bit for bit
        with torch.no_grad():
            assert torch.equal(ours(x), model(x))


def test_load_state_dict_takes_timms_names_strict(small):
    spec, model, _, x = small
    ours = rm.build(spec, backend="torch")
    ours.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))


def test_import_weights_and_convert_read_timms_names(small, tmp_path):
    spec, model, path, _ = small
    expected = _canonical(spec, model.state_dict())
    ours = rm.build(spec, backend="paddle")
    rm.import_weights(ours, path)
    assert all(np.array_equal(rm.export_weights(ours)[k], v) for k, v in expected.items())
    rm.convert(path, tmp_path / "w.safetensors", spec=spec)  # canonical names in the neutral file
    weights, stored = rm.load_weights(tmp_path / "w.safetensors")
    assert stored == spec and list(weights) == list(expected)
    assert all(np.array_equal(weights[k], v) for k, v in expected.items())


def _with_wrong_gamma(state: dict) -> dict:
    bad = dict(state)
    bad["stages.1.blocks.0.gamma"] = bad["stages.1.blocks.0.gamma"].reshape(DIMS[1], 1, 1)
    return bad


def test_a_wrong_shape_gamma_is_one_line_naming_the_tensor_and_its_shape(small, tmp_path):
    """Under timm's name, gamma must have timm's shape (C,): (C, 1, 1) is refused, whoever reads it,
    before anything is loaded."""
    spec, model, _, _ = small
    path = tmp_path / "bad.pth"
    torch.save(_with_wrong_gamma(model.state_dict()), path)
    expected = "stages.1.blocks.0.gamma (expected (16,), found (16, 1, 1)"
    for read in (lambda: rm.build(spec, backend="torch", weights=path),
                 lambda: rm.convert(path, tmp_path / "out.pdparams", spec=spec)):
        with pytest.raises(rm.WeightsError) as info:
            read()
        assert expected in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.pdparams").exists()
    ours = rm.build(spec, backend="torch")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(rm.WeightsError, match=r"stages\.1\.blocks\.0\.gamma \(expected \(16,\)") as info:
        ours.load_state_dict(_with_wrong_gamma(model.state_dict()), strict=True)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # nothing was loaded


# --------------------------------------------------------------------------- writing timm's names


@pytest.mark.parametrize("suffix", [".pth", ".pdparams", ".msgpack"])
def test_convert_writes_timms_names_and_reads_them_back(small, tmp_path, suffix):
    """naming="timm" writes timm's names and shapes in any framework format; read back, they are
    the same tensors, bit for bit. The .pth file loads strict into timm's own model."""
    spec, model, path, x = small
    rm.convert(path, tmp_path / "w.safetensors", spec=spec)
    out = tmp_path / f"timm{suffix}"
    rm.convert(tmp_path / "w.safetensors", out, naming="timm")  # the spec stored in the neutral file
    expected = _canonical(spec, model.state_dict())
    weights, _ = rm.load_weights(out)
    assert rm.make_plan(spec).scheme_of(weights) == "timm"
    assert all(np.array_equal(rm.export_weights(rm.build(spec, "torch", weights=out))[k], v)
               for k, v in expected.items())
    if suffix == ".pth":
        state = torch.load(out, weights_only=True)
        assert list(state) == list(model.state_dict())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        theirs = _timm()
        theirs.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert torch.equal(theirs(x), model(x))


def test_a_naming_the_spec_lacks_or_the_neutral_file_is_refused_before_any_work(small, tmp_path):
    spec, _, path, _ = small
    with pytest.raises(ValueError, match=r"naming 'nope': not a naming scheme of 'convnext_small_widths' "
                                         r"\(its schemes: 'timm'\)"):
        rm.convert(path, tmp_path / "out.pth", spec=spec, naming="nope")
    with pytest.raises(ValueError, match="naming 'timm': not a naming scheme of 'resnet18' \\(its schemes: none\\)"):
        rm.convert(path, tmp_path / "out.pth", spec="resnet18", naming="timm")
    with pytest.raises(ValueError, match="the neutral .safetensors file holds canonical names only"):
        rm.convert(path, tmp_path / "out.safetensors", spec=spec, naming="timm")
    assert not list(tmp_path.iterdir())


def test_cli_convert_naming(small, tmp_path, capsys):
    spec, model, path, _ = small
    rm.save_spec(spec, tmp_path / "net.yaml")
    out = tmp_path / "again.pth"
    assert main(["convert", str(path), str(tmp_path / "w.pdparams"), "--spec", str(tmp_path / "net.yaml")]) == 0
    assert main(["convert", str(tmp_path / "w.pdparams"), str(out), "--spec", str(tmp_path / "net.yaml"),
                 "--naming", "timm"]) == 0
    assert list(torch.load(out, weights_only=True)) == list(model.state_dict())
    capsys.readouterr()
    assert main(["convert", str(path), str(tmp_path / "x.pth"), "--spec", str(tmp_path / "net.yaml"),
                 "--naming", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "naming 'nope': not a naming scheme" in err
    assert main(["convert", str(path), str(tmp_path / "x.safetensors"), "--naming", "timm"]) == 2
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- full size: timm's convnext_tiny


@pytest.mark.slow  # full size: timm's own convnext_tiny, its spec inferred from its names and shapes
def test_timms_convnext_tiny_file_is_read_inferred_inspected_and_written_back(tmp_path, capsys):
    model = _timm(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=1000)
    path = tmp_path / "convnext_tiny.pth"
    torch.save(model.state_dict(), path)
    ours = rm.build("convnext_tiny", backend="torch", weights=path)
    x = torch.randn(1, 3, 67, 45, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))  # eval mode, an odd size: the same logits, bit for bit

    report = rm.inspect_file(path)
    assert (report.preset, report.naming) == ("convnext_tiny", "timm")
    assert "timm names" in str(report)
    assert main(["inspect", str(path)]) == 0
    assert "timm names" in capsys.readouterr().out

    rm.convert(path, tmp_path / "w.safetensors")  # no spec: inferred through timm's names
    assert rm.load_weights(tmp_path / "w.safetensors")[1] == rm.get_spec("convnext_tiny")
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "back.pth"), "--naming", "timm"]) == 0
    state = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
