"""Independent stages share one wave, and the biggest packs are submitted first."""

from __future__ import annotations

from pipelines.jobs import Job
from pipelines.runner import largest_packs_first
from pipelines.stages import stage_groups


def test_transfer_multi_teacher_and_hparam_run_as_one_wave():
    stages = ["zoo", "predict", "score", "transfer", "multi_teacher", "hparam", "robustness", "report"]
    assert stage_groups(stages) == [["zoo"], ["predict"], ["score"], ["transfer", "multi_teacher", "hparam"],
                                     ["robustness"], ["report"]]
    assert stage_groups(["multi_teacher", "report"]) == [["multi_teacher"], ["report"]]
    assert stage_groups(["score", "hparam"]) == [["score"], ["hparam"]]


def _job(name: str, pack: str = "") -> Job:
    return Job("transfer", {"n": name}, {"summary": f"transfers/{name}/summary.parquet"}, name=name, pack=pack)


def test_largest_packs_go_first_and_order_is_kept_otherwise():
    jobs = [_job("mt1"), _job("a1", "A"), _job("a2", "A"), _job("b1", "B"), _job("b2", "B"), _job("b3", "B"),
            _job("mt2")]
    assert [j.name for j in largest_packs_first(jobs)] == ["b1", "b2", "b3", "a1", "a2", "mt1", "mt2"]
    assert largest_packs_first([]) == []
