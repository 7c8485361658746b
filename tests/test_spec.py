"""The spec: validation messages name the field path and value; dict/JSON/YAML round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

import resnet_multi as rm
from conftest import PRESETS


def _with(path_value: dict, base="resnet50") -> dict:
    """The preset's dict with dotted-path overrides, e.g. {"stages.2.stride": 0}."""
    data = rm.get_spec(base).to_dict()
    for path, value in path_value.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if leaf.isdigit():
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return data


BAD_SPECS = [
    ({"stages.2.stride": 0}, "stages[2].stride: must be >= 1, got 0"),
    ({"stages.0.depth": -1}, "stages[0].depth: must be >= 1, got -1"),
    ({"stages.1.channels": 2.5}, "stages[1].channels: must be an integer, got 2.5"),
    ({"stages.3.dilate": "yes"}, "stages[3].dilate: must be true or false, got 'yes'"),
    ({"stages": []}, "stages: must be a non-empty list of stages, got ()"),
    ({"block.kind": "preact"}, "block.kind: must be one of 'basic', 'bottleneck', 'basic_1x1', 'dense', 'ghost', "
                                   "'vgg', 'convnext', 'hornet', got 'preact'"),
    ({"block.stride_on": "first"}, "block.stride_on: must be one of '3x3', '1x1', got 'first'"),
    ({"block.groups": 0}, "block.groups: must be >= 1, got 0"),
    ({"block.se_ratio": 2.0}, "block.se_ratio: must be a number in [0, 1], got 2.0"),
    ({"block.expansion": 0}, "block.expansion: must be >= 1, got 0"),
    ({"stem.widths": []}, "stem.widths: must be a non-empty list of channel counts, got ()"),
    ({"stem.widths.0": 0}, "stem.widths[0]: must be >= 1, got 0"),
    ({"stem.kernel_size": 4}, "stem.kernel_size: must be odd (symmetric padding), got 4"),
    ({"stem.stride": 0}, "stem.stride: must be >= 1, got 0"),  # else summary divides by zero
    ({"shortcut.kind": "identity"}, "shortcut.kind: must be one of 'conv_bn', 'avgpool_conv_bn', 'conv', got 'identity'"),
    ({"shortcut.when": "never"}, "shortcut.when: must be one of 'auto', 'always', got 'never'"),
    ({"head.num_classes": 0}, "head.num_classes: must be >= 1, got 0"),
    ({"head.dropout": 1.0}, "head.dropout: must be a number in [0, 1), got 1.0"),
    ({"in_channels": 0}, "in_channels: must be >= 1, got 0"),
    ({"norm.eps": 0}, "norm.eps: must be a positive number, got 0.0"),
    ({"norm.momentum": 1.5}, "norm.momentum: must be a number in [0, 1]"),
    ({"init.conv": "xavier"}, "init.conv: must be one of 'kaiming_normal_fan_out', 'kaiming_normal_fan_in', "
                              "'torch_default', 'trunc_normal', got 'xavier'"),
    ({"out_indices": [1, 2]}, "out_indices: needs head: null (a feature pyramid has no head), got (1, 2)"),
    ({"head": None, "out_indices": [1, 7]}, "out_indices[1]: must be a stage index in 0..3, got 7"),
    ({"head": None, "out_indices": [2, 1]}, "out_indices: must be strictly increasing, got (2, 1)"),
    ({"name": ""}, "name: must be a non-empty string, got ''"),
    ({"conv_bias": 1}, "conv_bias: must be true or false, got 1"),
    ({"format_version": 99}, "format_version: this resnet_multi reads version 1, got 99"),
    ({"block.width": 3}, "block: unknown key(s) 'width'"),
    ({"colour": "red"}, "spec: unknown key(s) 'colour'"),
    ({"stages.0": {"depth": 2}}, "stages[0].channels: is required for 'bottleneck' blocks, got None"),
    ({"stages.0": 3}, "stages[0]: expected a mapping, got 3"),
]


GHOST_BAD_SPECS = [
    ({"stages.1.blocks.0.stride": 0}, "stages[1].blocks[0].stride: must be >= 1, got 0"),  # else a ZeroDivisionError
    ({"stages.3.blocks.0.channels": 0}, "stages[3].blocks[0].channels: must be >= 1, got 0"),
]


@pytest.mark.parametrize("override, message", GHOST_BAD_SPECS, ids=[m.split(":")[0] for _, m in GHOST_BAD_SPECS])
def test_invalid_ghost_block_names_field_and_value(override, message):
    with pytest.raises(rm.SpecError) as info:
        rm.ResNetSpec.from_dict(_with(override, base="ghostnet_100"))
    assert message in str(info.value)


@pytest.mark.parametrize("override, message", BAD_SPECS, ids=[m.split(":")[0] for _, m in BAD_SPECS])
def test_invalid_spec_names_field_and_value(override, message):
    with pytest.raises(rm.SpecError) as info:
        rm.ResNetSpec.from_dict(_with(override))
    assert message in str(info.value)


def test_groups_only_on_bottleneck():
    with pytest.raises(rm.SpecError, match=r"block.groups: must be 1 for a 'basic' block, got 32"):
        rm.get_spec("resnet18").replace(block=rm.BlockSpec(kind="basic", groups=32))


def test_bottleneck_width_below_groups_is_rejected():
    block = rm.BlockSpec(kind="bottleneck", groups=32, width_per_group=1)
    with pytest.raises(rm.SpecError, match=r"stages\[0\].channels: gives a bottleneck width of 0"):
        rm.ResNetSpec(name="thin", stages=(rm.StageSpec(depth=1, channels=32),), block=block)


def test_spec_is_frozen():
    spec = rm.get_spec("resnet18")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.in_channels = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", PRESETS)
def test_dict_json_yaml_round_trip(name, tmp_path):
    spec = rm.get_spec(name)
    assert rm.ResNetSpec.from_dict(spec.to_dict()) == spec
    assert rm.ResNetSpec.from_dict(json.loads(spec.to_json())) == spec
    for suffix in (".json", ".yaml", ".yml"):
        path = tmp_path / f"{name}{suffix}"
        rm.save_spec(spec, path)
        assert rm.load_spec(path) == spec
    assert yaml.safe_load((tmp_path / f"{name}.yaml").read_text())["format_version"] == 1


def test_hand_written_yaml_with_defaults(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "name: tiny\n"
        "in_channels: 1\n"
        "block: {kind: bottleneck, stride_on: 1x1, se_ratio: 0.25}\n"
        "stages:\n  - {depth: 1, channels: 8}\n  - {depth: 2, channels: 16, stride: 2, dilate: true}\n"
        "head: null\n"
        "out_indices: [0, 1]\n"
        "norm: {eps: 1.001e-5, momentum: 0.01}\n"
    )
    spec = rm.load_spec(path)
    assert spec.block.resolved_expansion == 4 and spec.stages[1].dilate and spec.out_indices == (0, 1)
    assert spec.norm.eps == 1.001e-5 and spec.head is None and spec.stem == rm.StemSpec()


def test_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [{depth: 1, channels: 8, stride: 0}]\n")
    with pytest.raises(rm.SpecError, match=r"bad.yaml: stages\[0\].stride: must be >= 1, got 0"):
        rm.load_spec(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(rm.SpecError, match=r"broken.json: not valid JSON"):
        rm.load_spec(broken)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        rm.load_spec(tmp_path / "missing.yaml")
    with pytest.raises(rm.SpecError, match=r"unknown spec file suffix '.txt'"):
        rm.save_spec(rm.get_spec("resnet18"), tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_list_and_get_spec():
    assert rm.list_specs("resnet1*") == ["resnet18", "resnet101", "resnet152"]
    assert set(PRESETS) >= {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                            "resnext50_32x4d", "resnet50d", "resnet45", "d2l_resnet18"}
    with pytest.raises(KeyError, match="unknown preset 'resnet51'"):
        rm.get_spec("resnet51")


def test_every_invalid_field_is_reported_at_once():
    """Not the first only: independent sections are all checked (the family's only once the stages are valid)."""
    with pytest.raises(rm.SpecError) as info:
        rm.ResNetSpec.from_dict(_with({"stem.stride": 0, "stages.2.stride": 0, "head.num_classes": 0,
                                       "norm.eps": -1.0}))
    assert str(info.value) == ("stem.stride: must be >= 1, got 0; stages[2].stride: must be >= 1, got 0; "
                               "head.num_classes: must be >= 1, got 0; norm.eps: must be a positive number, got -1.0")
