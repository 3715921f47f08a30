"""The method registry is the one source of method names: a toy method declared in this module alone
is accepted by the config, has its default grid, runs through the transfer loop with a state hook,
is planned by the pipeline, and is labelled in the report's figures and tables."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from zoo_study._lazy import LazyModule
from zoo_study.config import ConfigError, load_config
from zoo_study.methods import (
    MethodState,
    ObjectiveOutput,
    Param,
    default_grid,
    get_method,
    method_label,
    method_names,
    method_sort_key,
    register_method,
    unregister_method,
)

L = LazyModule("zoo_study.methods.losses")


class _CountSteps(MethodState):
    def __init__(self) -> None:
        self.steps = 0

    def after_step(self, model) -> None:
        self.steps += 1

    def extra(self) -> dict:
        return {"toy_steps": self.steps}


def _toy_setup(ctx) -> MethodState:
    return _CountSteps()


@pytest.fixture()
def toy_method():
    @register_method("toy_kd", label="Toy KD", params={"alpha": Param(0.5, float, 0.0, 1.0)}, needs_labels=True,
                     grid={"base_lr": [1e-3, 1e-4], "alpha": [0.25, 0.75]}, setup=_toy_setup)
    def toy_kd(inp, p):
        """alpha * KL + (1 - alpha) * CE."""
        kl = L.kl_term(inp.teacher, inp.student, inp.temperature)
        return ObjectiveOutput(p["alpha"] * kl + (1 - p["alpha"]) * L.cross_entropy(inp.student, inp.labels))

    yield "toy_kd"
    unregister_method("toy_kd")


def test_registry_imports_without_torch():
    code = ("import sys; import zoo_study.methods, zoo_study.config, zoo_study.transfer.config, zoo_study.store; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_duplicate_registration_is_refused(toy_method):
    with pytest.raises(ValueError, match="'toy_kd' is already registered"):
        register_method("toy_kd", label="again")(lambda inp, p: None)


def test_bad_default_grid_key_is_refused_at_registration():
    with pytest.raises(ValueError, match="grid key 'lamda' is neither a config field"):
        register_method("toy_bad", label="bad", params={"lambda": Param(0.5)}, grid={"lamda": [0.1]})(lambda i, p: None)
    assert "toy_bad" not in method_names()


def test_toy_method_end_to_end(toy_method, tmp_path):
    # config accepts it (and its hyper-parameters), and refuses a bad value naming it
    cfg = load_config(None, [f"study.results_root={tmp_path / 'r'}", "transfer.methods=['toy_kd', 'kl']",
                             "transfer.hparams.toy_kd.alpha=0.25"])
    assert cfg.transfer.methods == ["toy_kd", "kl"]
    with pytest.raises(ConfigError, match=r"alpha=2.0 is invalid"):
        load_config(None, ["transfer.methods=['toy_kd']", "transfer.hparams.toy_kd.alpha=2.0"])
    # the grid and the labels come from the one declaration
    assert default_grid("toy_kd") == {"base_lr": [1e-3, 1e-4], "alpha": [0.25, 0.75]}
    assert method_label("toy_kd") == "Toy KD"
    assert method_sort_key("toy_kd")[0] == len(method_names()) - 1  # registered last: shown last
    from analysis.figures import method_color
    from analysis.tables import paper_success_rate

    assert method_color("toy_kd").startswith("#") and paper_success_rate("toy_kd") is None
    # the planner builds its resolved job config (default filled in, override applied)
    from pipelines.study import Study

    tc = Study.from_config(cfg).transfer_config("toy_kd", 0)
    assert tc["hparams"] == {"alpha": 0.25} and tc["base_lr"] == get_method("toy_kd").lr
    # the loop runs it, with its state hook called after every optimiser step
    from helpers.transfer_fixtures import tiny_source, trained
    from zoo_study.transfer import TransferConfig, run_transfer

    torch.set_num_threads(1)
    student, srec = trained(0)
    teacher, trec = trained(1)
    res = run_transfer(student, srec, [(teacher, trec)], tiny_source(),
                       TransferConfig(method="toy_kd", epochs=1, batch_size=30, transfer_fraction=0.4), job_id="toy")
    assert res.row["method"] == "toy_kd" and res.row["hparams_json"] == '{"alpha":0.5}'
    phase = res.info["phases"][0]
    assert phase["toy_steps"] == phase["steps"] == 4  # 120 samples / batch 30


def test_every_method_hook_resolves_to_a_function_of_its_own_module():
    """Setup hooks and table builders are references, resolved here for every registered method; a method
    with state keeps its objective, setup and tables in one module."""
    from zoo_study.methods import methods

    stateful = {m.name: m for m in methods() if m.setup is not None}
    assert {"crd", "xe_kl_mcl", "amtml_kd", "talking_models"} <= set(stateful)
    for m in methods():
        for hook in [m.fn, m.setup, *(t.build for t in m.tables)]:
            assert hook is None or callable(hook), (m.name, hook)
        if m.setup is not None:
            assert m.setup.__module__ == m.fn.__module__ or m.name == "xe_kl_mcl", m.name  # MCL reuses XE-KL's loss
            assert all(t.build.__module__ == m.setup.__module__ for t in m.tables), m.name
    assert stateful["xe_kl_mcl"].setup.__module__ == "zoo_study.transfer.mcl"
    assert [t.name for t in get_method("amtml_kd").tables] == ["teacher_weights"]


def test_register_method_refuses_an_unknown_field_or_a_string_hook():
    with pytest.raises(TypeError, match=r"unknown field\(s\) \['needs_lables'\]"):
        register_method("toy_typo", label="typo", needs_lables=True)
    with pytest.raises(TypeError, match="setup must be a function"):
        register_method("toy_str", label="str", setup="zoo_study.transfer.crd:setup_crd")
    assert "toy_typo" not in method_names() and "toy_str" not in method_names()


def test_method_key_maps_a_legacy_unsupervised_run_to_the_registered_twin(tmp_path):
    """SQL reads the registry's methods view: a run of a method whose hparams say it ran without labels counts
    as the method's declared twin, whatever the names look like (no name matching)."""
    from analysis.db import connect
    from helpers.analysis_fixtures import RootBuilder

    register_method("toy_route", label="Toy route", unsupervised_twin="toy_free")(lambda inp, p: None)
    register_method("toy_free", label="Toy free")(lambda inp, p: None)
    try:
        b = RootBuilder(tmp_path)
        b.transfer("S", "A", "toy_route", 0.01, hparams={"unsupervised": True})
        b.transfer("S", "B", "toy_route", 0.01)
        b.transfer("S", "C", "kl", 0.01, hparams={"supervised": False})  # no twin: keeps its name
        with connect(tmp_path) as db:
            keys = db.query("SELECT teacher, method_key(method, hparams_json) AS k FROM transfers ORDER BY teacher")
            view = db.query("SELECT name, label, needs_frozen, routes, unsupervised_twin FROM methods "
                            "WHERE name IN ('toy_route', 'kl_dp')  ORDER BY name").to_pylist()
        assert [r["k"] for r in keys.to_pylist()] == ["toy_free", "toy_route", "kl"]
        assert view == [{"name": "kl_dp", "label": "KL+DP", "needs_frozen": True, "routes": True,
                         "unsupervised_twin": "kl_dp_unsup"},
                        {"name": "toy_route", "label": "Toy route", "needs_frozen": False, "routes": False,
                         "unsupervised_twin": "toy_free"}]
    finally:
        unregister_method("toy_route")
        unregister_method("toy_free")


def test_a_method_registered_before_the_first_query_is_shown_after_the_shipped_ones():
    """The shipped methods' modules are imported on the first query; a study's own method registered earlier
    still comes after them in the report's order (colours, tables), as when the built-ins loaded at import."""
    code = ("from zoo_study.methods import register_method, method_sort_key, methods\n"
            "register_method('toy_early', label='Toy')(lambda inp, p: None)\n"
            "names = [m.name for m in methods()]\n"
            "print(names[0], names[-1], method_sort_key('toy_early')[0] == len(names) - 1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["kl", "toy_early", "True"]
