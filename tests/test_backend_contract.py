"""Every registered backend package keeps the contract (backends/_contract.py, registry.Backend):
the same submodules, a registry row that agrees with the package, optional hooks declared and
present exactly when declared, a weight layout covering every parameter role and translating
files without a plan unambiguously, and an import without its framework. The tests' wrong
backend registers as a real one does: one row."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import _wrong_backends as wrong
import resnet_multi as rm
from conftest import BACKENDS, odd_input
from resnet_multi import layout as L
from resnet_multi import registry
from resnet_multi.backends import _contract
from resnet_multi.weights import random_weights


@pytest.mark.parametrize("name", BACKENDS)
def test_package_has_the_contracts_modules_and_agrees_with_its_row(name):
    info = registry.backend_info(name)
    package = importlib.import_module(info.package)
    folder = os.path.dirname(package.__file__)
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")} - {"__init__"}
    assert modules == set(_contract.SUBMODULES), f"{name}: modules {sorted(modules)}"
    assert (package.NAME, package.SUFFIXES, package.FEATURES) == (info.name, info.suffixes, info.features)
    assert isinstance(package.DTYPES, tuple) and all(isinstance(d, str) for d in package.DTYPES)
    assert {"float32", "float64"} <= set(package.DTYPES)
    assert package.LAYOUT is registry.layout_of(name)


@pytest.mark.parametrize("name", BACKENDS)
def test_package_satisfies_the_protocol_and_declares_its_hooks_honestly(name):
    package = registry.get_backend(name)
    assert isinstance(package, registry.Backend), f"{name}: lacks part of registry.Backend"
    assert "dtype" in inspect.signature(package.build).parameters
    for feature, names in _contract.FEATURE_NAMES.items():
        declared = feature in package.FEATURES
        for hook in names:  # defined in its submodule exactly when declared, and reachable only then
            defined = hasattr(importlib.import_module(f"{package.__name__}.{_contract.CONTRACT[hook]}"), hook)
            assert defined == declared, f"{name}: {hook} defined={defined}, feature {feature!r} declared={declared}"
            assert hasattr(package, hook) == declared
    optional = {hook for names in _contract.FEATURE_NAMES.values() for hook in names}
    for hook, where in _contract.CONTRACT.items():  # every required name lives where the contract says
        if hook not in optional:
            module = importlib.import_module(f"{package.__name__}.{where}")
            assert hasattr(module, hook), f"{name}: {where} lacks {hook}"


@pytest.mark.parametrize("name", BACKENDS)
def test_package_and_layout_import_without_the_framework(name):
    info = registry.backend_info(name)
    code = (f"import sys, {info.package} as b; b.LAYOUT, b.NAME, b.FEATURES; "
            f"from resnet_multi.registry import layout_of; layout_of({name!r}); "
            f"assert {info.framework!r} not in sys.modules, 'imported {info.framework}'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", BACKENDS)
def test_layout_covers_every_role_and_reads_files_without_a_plan(name):
    layout = registry.layout_of(name)
    assert set(layout.leaves) == set(L.ROLES)
    L.file_rules(layout)  # raises if a native (or canonical) leaf and rank translate two ways
    for preset in ("resnet18", "densenet121", "ghostnet_050"):
        plan = rm.make_plan(rm.get_spec(preset))
        weights = random_weights(plan, seed=1)
        native = {}
        for canonical, array in weights.items():  # the plan's loop and the file's agree
            key, converted = L.to_native(layout, plan, canonical, array)
            native[key] = converted
            if layout.naming is None or not plan.aliases.get(layout.naming):
                assert L.canonical_to_file(layout, canonical, array)[0] == key
                back, restored = L.file_to_canonical(layout, key, converted)
                assert back == canonical and np.array_equal(restored, array)
        assert len(native) == len(weights), f"{name}: two parameters of {preset} share a native name"
        exported = L.export(layout, plan, native.__getitem__)
        assert list(exported) == list(plan.params)
        for canonical, array in weights.items():
            np.testing.assert_array_equal(exported[canonical], array, err_msg=canonical)
        to_canonical = L.canonical(layout, plan)
        assert all(to_canonical(key, value)[0] == canonical
                   for (canonical, _), (key, value) in zip(weights.items(), native.items()))


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_weights_are_one_error_listing_every_bad_name(name):
    spec = rm.get_spec("resnet18")
    model = rm.build(spec, name)
    before = rm.export_weights(model)
    backend = registry.get_backend(name)
    bad = {"fc.bias": np.zeros(1000, np.float32), "bn1.weight": np.zeros(3, np.float32),
           "nope.weight": np.zeros(3, np.float32), "conv1.weight": np.zeros((64, 3, 7, 6), np.float32)}
    with pytest.raises(rm.WeightsError) as info:
        backend.import_weights(model, bad)
    for bad_name in ("bn1.weight", "nope.weight", "conv1.weight"):
        assert bad_name in str(info.value)
    assert len(info.value.unexpected) == 1 and len(info.value.mismatched) == 2
    after = rm.export_weights(model)  # all or nothing: fc.bias was not written either
    for key, array in before.items():
        np.testing.assert_array_equal(after[key], array, err_msg=key)


def test_wrong_backend_registers_as_one_row(monkeypatch):
    name = wrong.register(monkeypatch, None)
    assert name in registry.backend_names() and registry.backend_info(name).framework == "numpy"
    backend = registry.get_backend(name)
    assert set(backend.FEATURES) <= set(_contract.FEATURE_NAMES)
    spec = rm.get_spec("resnet18")
    model = rm.build(spec, name)
    assert registry.backend_of(model) is backend
    x = odd_input(spec)
    expected = rm.reference_forward(rm.make_plan(spec), rm.export_weights(model), x)["logits"]
    np.testing.assert_allclose(rm.forward(model, x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(rm.BackendError, match="no deployment export"):
        rm.export(model, "unused", (1, 3, 33, 47))


def test_defaults_come_from_the_registry():
    assert registry.default_backend() == registry.backend_names()[0]
    assert registry.backends_with("export") == tuple(n for n, i in registry.BACKENDS.items() if "export" in i.features)
    assert registry.native_suffixes() == {s: n for n, i in registry.BACKENDS.items() for s in i.suffixes}
    with pytest.raises(rm.BackendError, match="unknown backend"):
        registry.layout_of("tensorflow")


@pytest.mark.parametrize("module", ["api", "inference", "export", "reference", "layout", "walk"])
def test_core_code_names_no_backend(module):
    """Defaults such as "the default backend" come from the registry: no backend name is a string
    constant in the code (docstrings aside) of these core modules."""
    import ast

    source = importlib.import_module(f"resnet_multi.{module}").__file__
    tree = ast.parse(open(source).read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings
             and isinstance(node.value, str) and node.value in registry.backend_names()]
    assert not named, f"resnet_multi/{module}.py names backends {named}"
