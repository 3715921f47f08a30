"""The Study: models typed once, every stage planned once, the validator checking the very configs the
planners build; the Stage list as the one source of the CLI's, the runner's and the store's stage facts."""

from __future__ import annotations

import json

import pytest

from pipelines import plan_transfers
from pipelines.stages import STAGES, stage_executors, stage_groups, stage_names, table_stage
from pipelines.study import Study
from zoo_study.config import validate_config
from zoo_study.store import TABLES
from zoo_study.zoo.study_model import AdaptedModel, EmbeddedModel, RandomModel, RefModel, study_model


def _raw(tmp_path) -> dict:
    pairs = [["resnet10t_w16", "mixer_p8"], ["mixer_p8", "convnext_atto_p2"], ["convnext_atto_p2", "mixer_p8"]]
    return {"study": {"results_root": str(tmp_path)},
            "zoo": {"embedded": ["resnet10t_w16", "mixer_p8", "convnext_atto_p2"], "random_teachers": ["resnet10t_w16"]},
            "semantics": {"enabled": False},
            "transfer": {"methods": ["kl", "xe_kl"], "pairs": "explicit", "explicit": pairs, "seeds": [0],
                         "method_pairs": {"xe_kl": 2}, "variants": [{"student_init": "scratch"}],
                         "replicate": {"seeds": [5], "n_pairs": 1, "methods": ["kl"]}},
            "multi_teacher": {"enabled": True, "students": ["mixer_p8"], "teachers": ["resnet10t_w16", "convnext_atto_p2"],
                              "modes": ["sequential"], "method": "kl", "epochs": 2, "parallel_methods": ["amtml_kd"]},
            "robustness": {"enabled": True, "methods": ["kl"]}}


def test_the_validator_checks_exactly_the_configs_the_planners_build(tmp_path):
    """Replicate seeds, method_pairs, variants, parallel methods and single baselines included: the copy of
    the planners' loops the validator used to keep had none of the last four kinds of job."""
    study = Study.from_config(validate_config(_raw(tmp_path)))
    planned = {json.dumps(j.spec["config"], sort_keys=True)
               for s in ("transfer", "multi_teacher") for j in study.plan(s)}
    checked = {json.dumps(c, sort_keys=True) for c in study.transfer_configs()}
    assert planned == checked
    seeds = sorted({c["seed"] for c in map(json.loads, checked) if c["study_part"] == "transfer"})
    assert seeds == [0, 5]  # the replicate seed on the first pair
    baselines = [c for c in map(json.loads, checked) if c["study_part"] == "multi_teacher" and c["mode"] == "single"]
    assert len(baselines) == 1 and baselines[0]["epochs"] == 2  # each teacher alone, mt.epochs
    # jobs by hand: kl on 3 pairs x (study, scratch) + its replicate seed on pair 0 x 2; xe_kl on 2 pairs x 2
    assert len(study.plan("transfer")) == 3 * 2 + 2 + 2 * 2
    # sequential + amtml_kd x (study, scratch) + 2 single baselines
    assert len(study.plan("multi_teacher")) == 1 + 2 + 2


def test_every_stage_is_planned_once_robustness_reads_the_transfer_plans(tmp_path, monkeypatch):
    calls = []
    real = plan_transfers.transfer_job
    monkeypatch.setattr(plan_transfers, "transfer_job", lambda *a, **k: calls.append(1) or real(*a, **k))
    study = Study.from_config(validate_config(_raw(tmp_path)))
    rob = study.plan("robustness")
    plans = study.plans()
    assert len(calls) == len(plans["transfer"]) + len(plans["multi_teacher"]) == 12 + 5
    kl = [j for j in plans["transfer"] + plans["multi_teacher"] if j.spec["config"]["method"] == "kl"]
    assert len(rob) == 2 + len(kl)  # the two students before transfer, then each kl transfer's student
    assert {j.spec["transfer_id"] for j in rob} - {None} == {j.job_id for j in kl}


def test_study_models_are_typed_and_their_payloads_read_back(tmp_path):
    raw = _raw(tmp_path)
    raw["zoo"]["models"] = [{"id": "t", "source": "timm", "arch": "resnet18.a1_in1k"}]
    study = Study.from_config(validate_config(raw))
    kinds = {m.model_id: type(m) for m in study.models}
    assert kinds == {"resnet10t_w16": EmbeddedModel, "mixer_p8": EmbeddedModel, "convnext_atto_p2": EmbeddedModel,
                     "t": RefModel, "random__resnet10t_w16": RandomModel}
    for m in study.models:
        back = study_model(json.loads(json.dumps(m.payload())))  # through a job spec's JSON
        assert type(back) is type(m) and back.payload() == m.payload()
    rnd = study.by_id["random__resnet10t_w16"]
    assert not rnd.trained and not rnd.has_weights_file and rnd.payload()["kind"] == "random"
    assert rnd.spec["seed"] == 0 and rnd.arch_args()[0] == "resnet10t"
    assert study.by_id["t"].ref(10).num_classes == 10 and study.by_id["t"].arch_args() == ("resnet18.a1_in1k", {}, None)
    raw["zoo"]["adapt"] = {"enabled": True}
    adapted = Study.from_config(validate_config(raw))
    assert {type(m) for m in adapted.models} == {AdaptedModel, RandomModel}
    a = adapted.by_id["mixer_p8"]
    assert a.has_weights_file and type(a.base) is EmbeddedModel and a.arch_args() == a.base.arch_args()
    with pytest.raises(ValueError, match="kind 'nope'"):
        study_model({"model_id": "x", "kind": "nope", "spec": {}})


def test_the_stage_list_is_the_one_source_of_stage_facts():
    names = stage_names()
    assert names == ["zoo", "predict", "score", "semantics", "transfer", "multi_teacher", "hparam", "robustness",
                     "report"]
    assert stage_names(jobs_only=True) == names[:-1]
    executors = stage_executors()
    assert set(executors) == set(names[:-1]) | {"transfer_pack", "multi_teacher_pack", "hparam_pack"}
    # every result table is written by a stage of the list (failures: by any stage)
    assert {t: table_stage(t) for t in TABLES if table_stage(t) == "any"} == {"failures": "any"}
    assert table_stage("transfers") == "transfer" and table_stage("hparams") == "hparam"
    assert stage_groups(names)[3] == ["semantics", "transfer", "multi_teacher", "hparam"]
    assert [s.name for s in STAGES if s.reads_scores] == ["transfer", "hparam", "robustness"]
