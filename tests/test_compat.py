"""Tests of the torchvision compat shim (zoo_study._compat).

Why: the pinned torchvision wheel is a CUDA build whose C ops fail to load under the CPU torch build,
and ``import torchvision`` (so ``import timm``) then dies. The shim must make the import work here and
must do nothing on a machine where the ops load, so it never masks real kernels on a GPU box. The
real import runs in fresh interpreters (this process has torchvision imported already); the decision
itself is tested with monkeypatching.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from zoo_study import _compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_timm_works_after_zoo_study_in_a_fresh_interpreter():
    proc = run_python(
        "import sys, zoo_study\n"
        "assert 'torch' not in sys.modules, 'importing zoo_study must stay cheap'\n"
        "import timm, torchvision\n"
        "from zoo_study import _compat\n"
        "m = timm.create_model('resnet10t', pretrained=False, num_classes=2, channels=(4, 8, 8, 8))\n"
        "print('ops_load', _compat._torchvision_ops_load(), 'shim', _compat._FRAGMENT is not None)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ops_load = "ops_load True" in proc.stdout
    # the shim is installed exactly when the C ops do not load
    assert ("shim True" in proc.stdout) == (not ops_load), proc.stdout


def test_shim_is_needed_on_this_machine_or_torchvision_imports_plainly():
    """Documents the problem: without zoo_study, torchvision either imports (ops load) or fails on the
    missing nms op, the exact case the shim handles."""
    proc = run_python("import torchvision")
    if proc.returncode != 0:
        assert "torchvision::nms" in proc.stderr


@pytest.fixture
def fresh_state(monkeypatch):
    """Pretend torchvision was never imported and no shim was installed; record Library definitions."""
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(_compat, "_FRAGMENT", None)
    defined: list = []

    class FakeLibrary:
        def __init__(self, ns, kind):
            defined.append(("lib", ns, kind))

        def define(self, schema):
            defined.append(("def", schema))

    import torch

    monkeypatch.setattr(torch.library, "Library", FakeLibrary)
    return defined


def test_shim_is_a_no_op_when_ops_load(fresh_state, monkeypatch):
    monkeypatch.setattr(_compat, "_torchvision_ops_load", lambda: True)
    assert _compat.ensure_torchvision_importable() is False
    assert fresh_state == [] and _compat._FRAGMENT is None


def test_shim_declares_missing_schemas_when_ops_fail(fresh_state, monkeypatch):
    monkeypatch.setattr(_compat, "_torchvision_ops_load", lambda: False)
    assert _compat.ensure_torchvision_importable() is True
    assert fresh_state[0] == ("lib", "torchvision", "FRAGMENT")
    assert [d[1] for d in fresh_state[1:]] == list(_compat.MISSING_OP_SCHEMAS)
    # a second call does not define the ops twice
    assert _compat.ensure_torchvision_importable() is True and len(fresh_state) == 3


def test_shim_does_nothing_once_torchvision_is_imported(fresh_state, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setattr(_compat, "_torchvision_ops_load", lambda: pytest.fail("must not probe"))
    assert _compat.ensure_torchvision_importable() is False and fresh_state == []


def test_ops_probe_decisions(monkeypatch, tmp_path):
    import importlib.util

    import torch

    # torchvision absent: nothing to patch
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _compat._torchvision_ops_load() is True
    # a package without a compiled _C library: the ops cannot load
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert _compat._torchvision_ops_load() is False
    # a _C library that loads / fails to load
    (tmp_path / "_C.so").write_bytes(b"")
    monkeypatch.setattr(torch.ops, "load_library", lambda path: None)
    assert _compat._torchvision_ops_load() is True

    def fail(path):
        raise OSError("undefined symbol")

    monkeypatch.setattr(torch.ops, "load_library", fail)
    assert _compat._torchvision_ops_load() is False


def test_import_hook_runs_the_check_once(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, _compat._TorchvisionHook)])
    calls: list = []
    monkeypatch.setattr(_compat, "ensure_torchvision_importable", lambda: calls.append(1))
    _compat.install_import_hook()
    _compat.install_import_hook()  # idempotent
    hooks = [f for f in sys.meta_path if isinstance(f, _compat._TorchvisionHook)]
    assert len(hooks) == 1 and sys.meta_path[0] is hooks[0]
    assert hooks[0].find_spec("numpy") is None and calls == []  # other imports pass straight through
    assert hooks[0].find_spec("torchvision") is None and calls == [1]  # runs, then steps aside
    assert not any(isinstance(f, _compat._TorchvisionHook) for f in sys.meta_path)
