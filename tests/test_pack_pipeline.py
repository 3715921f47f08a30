"""Packs through the pipeline: one task per pair, results per transfer, identical to unpacked runs,
one member's failure recorded for that member only, a rerun does nothing."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.cli import main
from zoo_study.methods import ObjectiveOutput, register_method, unregister_method

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MICRO = micro_study("packs") + """
[transfer]
methods = {methods}
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"]]
epochs = 2
batch_size = 32
transfer_fraction = 0.5

[ray]
address = "local"
pack_size = {pack_size}
"""


@pytest.fixture(params=["nan", "raise"])
def exploding_method(request):
    """A method whose loss is NaN from the first step, or whose objective raises from its second step on."""
    calls = {"n": 0}

    @register_method("explodes_in_pack", label="Explodes")
    def explodes(inp, p):
        """NaN loss from the first step, or an exception from the second on."""
        calls["n"] += 1
        if request.param == "raise" and calls["n"] >= 2:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (a member's own crash)")
        return ObjectiveOutput(inp.student.sum() * (math.nan if request.param == "nan" else 0.0))

    yield "explodes_in_pack", request.param
    unregister_method("explodes_in_pack")


def _run(tmp: Path, name: str, methods: list[str], pack_size: int, capsys) -> tuple[int, Path, str]:
    root = tmp / name
    cfg = tmp / f"{name}.toml"
    cfg.write_text(MICRO.format(root=root, methods=methods, pack_size=pack_size).replace("'", '"'))
    code = main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,transfer"])
    return code, root, capsys.readouterr().err


def _summaries(root: Path) -> dict[str, dict]:
    rows = [pq.read_table(p).to_pylist()[0] for p in (root / "transfers").glob("*/summary.parquet")]
    return {r["method"]: {k: v for k, v in r.items() if k not in ("runtime_s",)} for r in rows}


def test_packed_pipeline_equals_unpacked_and_isolates_a_failure(tmp_path, capsys, exploding_method, caplog,
                                                                monkeypatch):
    from pipelines import executors, jobs
    from pipelines.packs import MemberResult

    caplog.set_level(logging.INFO)
    name, kind = exploding_method
    methods = ["kl", name, "kl_dp", "xe_kl_mcl"]
    returned: list[dict] = []  # what the pack's executor hands the runner: one typed result per member
    real = executors.transfer_pack_job
    monkeypatch.setattr(executors, "transfer_pack_job", lambda *a: returned.append(real(*a)) or returned[-1])
    monkeypatch.setattr(jobs, "_RESOLVED", {})
    code, packed_root, _ = _run(tmp_path, "packed", methods, 16, capsys)
    assert code == 1  # one job failed
    assert "transfer pack of 4" in caplog.text  # one task for the pair
    (result,) = returned
    assert len(result) == 4 and all(isinstance(r, MemberResult) and r.job_id == jid for jid, r in result.items())
    failed = [r for r in result.values() if not r.ok]
    assert len(failed) == 1 and not failed[0].oom and failed[0].error.startswith(
        "TransferDiverged" if kind == "nan" else "RuntimeError: mat1 and mat2")
    assert all(set(r.outputs) == {"summary", "epochs", "predictions"} for r in result.values() if r.ok)
    failures = pq.read_table(packed_root / "failures").to_pylist()
    assert failures[0]["job_id"] == failed[0].job_id and failures[0]["error"] == failed[0].error
    assert [f["stage"] for f in failures] == ["transfer"] and failures[0]["attempts"] == 1
    if kind == "nan":
        assert "explodes_in_pack loss is nan" in failures[0]["error"]
    else:  # the member's own error and traceback, recorded for its own job id
        assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in failures[0]["error"]
        assert "in explodes" in failures[0]["traceback"] and "_member_step" in failures[0]["traceback"]
    assert not (packed_root / "transfers" / failures[0]["job_id"]).exists()
    packed = _summaries(packed_root)
    assert set(packed) == {"kl", "kl_dp", "xe_kl_mcl"}
    # the same study unpacked: the same job ids and the same numbers
    code, alone_root, _ = _run(tmp_path, "alone", ["kl", "kl_dp", "xe_kl_mcl"], 1, capsys)
    assert code == 0
    alone = _summaries(alone_root)
    assert packed == alone
    # a rerun of the packed study redoes only the failed member (it fails again), nothing else
    caplog.clear()
    code, _, _ = _run(tmp_path, "packed", methods, 16, capsys)
    assert code == 1 and "transfer pack" not in caplog.text and "3 done, 1 to run" in caplog.text


MICRO_TWO_STUDENTS = micro_study("packs2").replace(
    'embedded = ["resnet10t_w16", "mixer_p8"]', 'embedded = ["resnet10t_w16", "mixer_p8", "resnet18_w16_short"]') + """
[transfer]
methods = ["kl", "kl_dp"]
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"], ["resnet10t_w16", "resnet18_w16_short"]]
epochs = 2
batch_size = 32
transfer_fraction = 0.5

[ray]
address = "local"
pack_students = {pack_students}
"""


def test_students_of_one_teacher_share_a_pack_and_give_the_same_results(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    results = {}
    for n in (2, 1):
        root = tmp_path / f"s{n}"
        cfg = tmp_path / f"s{n}.toml"
        cfg.write_text(MICRO_TWO_STUDENTS.format(root=root, pack_students=n))
        caplog.clear()
        assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,transfer"]) == 0
        packs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("transfer pack of")]
        if n == 2:  # one task: both students, the teacher's batches and forward shared
            assert packs == ["transfer pack of 4 (kl, kl_dp, kl, kl_dp): resnet10t_w16 -> mixer_p8, resnet18_w16_short"] \
                or packs == ["transfer pack of 4 (kl, kl_dp, kl, kl_dp): resnet10t_w16 -> resnet18_w16_short, mixer_p8"]
        else:  # one task per pair
            assert len(packs) == 2 and all(p.startswith("transfer pack of 2") for p in packs)
        rows = [pq.read_table(p).to_pylist()[0] for p in (root / "transfers").glob("*/summary.parquet")]
        results[n] = {(r["student"], r["method"]): {k: v for k, v in r.items() if k != "runtime_s"} for r in rows}
    assert len(results[2]) == 4 and results[2] == results[1]


def test_a_student_that_cannot_be_built_fails_only_its_own_pack_members(tmp_path, capsys, caplog, monkeypatch):
    """pack_students = 2: the teacher's pack holds both students; building one of them fails (as a bad
    checkpoint would). Its two transfers get failure records with its error; the other student's two
    transfers finish with the numbers of an unpacked run."""
    import pipelines.executors as executors

    caplog.set_level(logging.INFO)
    ref_root, root = tmp_path / "ref", tmp_path / "broken"
    for r, n in ((ref_root, 1), (root, 2)):
        (tmp_path / f"{r.name}.toml").write_text(MICRO_TWO_STUDENTS.format(root=r, pack_students=n))
    assert main(["run", str(tmp_path / "ref.toml"), "--no-progress", "--stage", "zoo,predict,transfer"]) == 0
    assert main(["run", str(tmp_path / "broken.toml"), "--no-progress", "--stage", "zoo,predict"]) == 0
    real = executors.build_model

    def build(payload, *a, **k):
        if payload["model_id"] == "resnet18_w16_short":
            raise OSError("checkpoint of resnet18_w16_short is truncated")
        return real(payload, *a, **k)

    monkeypatch.setattr(executors, "build_model", build)
    caplog.clear()
    assert main(["run", str(tmp_path / "broken.toml"), "--no-progress", "--stage", "transfer"]) == 1
    assert "transfer pack of 2 (kl, kl_dp): resnet10t_w16 -> mixer_p8" in caplog.text
    failures = pq.read_table(root / "failures").to_pylist()
    assert len(failures) == 2 and all("checkpoint of resnet18_w16_short is truncated" in f["error"]
                                      and "in build" in f["traceback"] for f in failures)

    def rows(r: Path) -> dict:
        found = [pq.read_table(p).to_pylist()[0] for p in (r / "transfers").glob("*/summary.parquet")]
        return {(x["student"], x["method"]): {k: v for k, v in x.items() if k != "runtime_s"} for x in found}

    ref, got = rows(ref_root), rows(root)
    assert set(got) == {("mixer_p8", "kl"), ("mixer_p8", "kl_dp")}
    assert all(got[k] == ref[k] for k in got)
