"""Out of accelerator memory: a pack that raises ``torch.OutOfMemoryError`` is split in halves and retried,
a lone job once more with gradient checkpointing, and only a job that never fits fails; the transfers of
a split pack equal those of an unsplit run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.jobs import Job, JobContext
from pipelines.packs import MemberResult
from pipelines.runner import run_jobs

torch = pytest.importorskip("torch")
STAGE = "_t.mem"


def _oom(what: str) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory: {what} (injected)")


def _row(spec: dict, ctx: JobContext) -> pa.Table:
    return pa.table({"value": [int(spec["value"])], "ckpt": [bool(ctx.runtime.get("grad_checkpointing"))]})


def test_oom_splits_packs_then_checkpoints_then_fails_only_what_never_fits(tmp_path: Path):
    calls: list[tuple[list[int], bool]] = []  # per task: the values it ran and whether checkpointing was on

    def alone(spec: dict, inputs: dict, ctx: JobContext) -> dict:
        calls.append(([spec["value"]], bool(ctx.runtime.get("grad_checkpointing"))))
        if spec.get("never_fits") or (spec.get("member_oom") and not ctx.runtime.get("grad_checkpointing")):
            raise _oom(f"value {spec['value']}")
        return {"row": _row(spec, ctx)}

    def packed(spec: dict, inputs: dict, ctx: JobContext) -> dict:
        calls.append(([m["value"] for m in spec["members"]], bool(ctx.runtime.get("grad_checkpointing"))))
        if len(spec["members"]) > 2:  # the whole pack does not fit
            raise _oom(f"pack of {len(spec['members'])}")
        out = {}
        for m, jid in zip(spec["members"], spec["job_ids"]):
            if m.get("member_oom") or m.get("never_fits"):  # a member's own OOM, its pack going on
                out[jid] = MemberResult.failed(jid, _oom(f"value {m['value']}"))
            else:
                out[jid] = MemberResult(jid, {"row": _row(m, ctx)})
        return out

    flags = {1: {"member_oom": True}, 3: {"never_fits": True}}
    jobs = [Job(STAGE, {"value": i, **flags.get(i, {})}, {"row": f"m/{i}.parquet"}, pack="k", pack_group="s")
            for i in range(5)]
    report = run_jobs(jobs, tmp_path, use_ray=False, executors={STAGE: alone, f"{STAGE}_pack": packed},
                      pack_size=8, progress=False)
    # by hand: 5 do not fit -> [0,1,2] + [3,4]; [0,1,2] -> [0,1] + [2]; [0,1]: 1's own OOM -> 1 alone -> 1 again
    # checkpointed (fits); 2 alone; [3,4]: 3's own OOM -> 3 alone -> checkpointed -> still too big: fails
    assert calls == [([0, 1, 2, 3, 4], False), ([0, 1, 2], False), ([0, 1], False), ([1], False), ([1], True),
                     ([2], False), ([3, 4], False), ([3], False), ([3], True)]
    assert report.ran == 4 and report.failed == 1
    (failure,) = report.failures
    assert failure.job_id == jobs[3].job_id and failure.error.startswith("OutOfMemoryError")
    rows = {i: pq.read_table(tmp_path / f"m/{i}.parquet").to_pylist()[0] for i in (0, 1, 2, 4)}
    assert rows == {i: {"value": i, "ckpt": i == 1} for i in (0, 1, 2, 4)}


MICRO = micro_study("oom") + """
[transfer]
methods = ["kl", "kl_dp", "xe_kl_mcl", "xe_kl"]
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"]]
epochs = 1
batch_size = 32
transfer_fraction = 0.5

[ray]
address = "local"
pack_size = 16
"""


def _tables(root: Path) -> dict[str, list[dict]]:
    """Every transfer output by job and name, without the wall-time columns."""
    out = {}
    for path in sorted((root / "transfers").glob("*/*.parquet")):
        table = pq.read_table(path)
        table = table.drop_columns([c for c in ("runtime_s",) if c in table.column_names])
        out[f"{path.parent.name}/{path.name}"] = table.to_pylist()
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_pack_that_runs_out_of_memory_finishes_with_the_results_of_an_unsplit_run(tmp_path, monkeypatch,
                                                                                   caplog):
    from pipelines import executors, jobs
    from pipelines.cli import main

    cfg = tmp_path / "oom.toml"
    base = tmp_path / "base"
    cfg.write_text(MICRO.format(root=base))
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict"]) == 0
    split = tmp_path / "split"
    shutil.copytree(base, split)
    assert main(["run", str(cfg), "--no-progress", "--stage", "transfer"]) == 0  # one pack of 4

    real = executors.transfer_pack_job
    sizes: list[int] = []

    def first_pack_oom(spec, inputs, ctx):  # the pack of 4 does not fit; in the first half, member 2 alone
        sizes.append(len(spec["members"]))
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        out = real(spec, inputs, ctx)
        if len(sizes) == 2:
            jid = spec["job_ids"][1]
            out[jid] = MemberResult.failed(jid, _oom("a member (injected)"))
        return out

    monkeypatch.setattr(executors, "transfer_pack_job", first_pack_oom)
    monkeypatch.setattr(jobs, "_RESOLVED", {})  # resolve the executor again (now the wrapper)
    cfg.write_text(MICRO.format(root=split))
    caplog.set_level("WARNING")
    assert main(["run", str(cfg), "--no-progress", "--stage", "transfer"]) == 0
    assert sizes == [4, 2, 2]  # the pack, its two halves; the member of the first half then ran alone
    assert "retrying as packs of 2 and 2" in caplog.text
    assert not (split / "failures").exists() or not list((split / "failures").iterdir())
    unsplit, after_oom = _tables(base), _tables(split)
    assert len(unsplit) == 12 and after_oom == unsplit  # summary, epochs, predictions of 4 transfers, bit for bit


def test_packs_of_gpu_jobs_are_sized_by_the_devices_memory_when_no_budget_is_set(tmp_path, monkeypatch, caplog):
    """ray.pack_gpu_memory_gb unset: 80% of the (fake) card. Members: 30 bytes alone, 20 of them activations,
    teacher forward 10: a pack of n holds 10 + 10 n + 20 bytes, so a 100-byte card (budget 80) takes
    n <= 5 and 11 jobs run as packs of 5, 5 and 1."""
    from pipelines import backends

    monkeypatch.setattr(backends.SerialBackend, "device_memory", lambda self: 100.0)
    sizes: list[int] = []

    def alone(spec, inputs, ctx):
        sizes.append(1)
        return {"row": _row(spec, ctx)}

    def packed(spec, inputs, ctx):
        sizes.append(len(spec["members"]))
        return {jid: MemberResult(jid, {"row": _row(m, ctx)}) for m, jid in zip(spec["members"], spec["job_ids"])}

    jobs = [Job(STAGE, {"value": i}, {"row": f"m/{i}.parquet"}, num_gpus=1, pack="k", pack_group="s",
                pack_cost=30.0, pack_activation=20.0, pack_shared=10.0) for i in range(11)]
    caplog.set_level("INFO")
    report = run_jobs(jobs, tmp_path, use_ray=False, executors={STAGE: alone, f"{STAGE}_pack": packed},
                      pack_size=16, progress=False)
    assert report.ok and report.ran == 11 and sizes == [5, 5, 1]
    assert "at most 0.0 GB (80% of the smallest GPU's 0.0 GB" in caplog.text
    # a budget set in the config wins over the card: 50 bytes -> n <= 2
    sizes.clear()
    run_jobs(jobs, tmp_path / "b", use_ray=False, executors={STAGE: alone, f"{STAGE}_pack": packed}, pack_size=16,
             pack_memory_bytes=50.0, progress=False)
    assert sizes == [2, 2, 2, 2, 2, 1]


def test_the_device_memory_is_read_from_the_first_visible_gpu(monkeypatch):
    from types import SimpleNamespace

    from pipelines.backends import gpu_total_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_total_memory() == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * 2**30))
    assert gpu_total_memory() == 80 * 2**30


def test_a_lone_retry_turns_on_timms_gradient_checkpointing_in_the_student(caplog):
    """What the runner's last retry asks for (Job.runtime["grad_checkpointing"]) reaches the model; a model
    without it runs as it is, with a warning."""
    import zoo_study  # noqa: F401
    import timm

    from pipelines.executors import _checkpointed

    class Record:
        model_id = "m"

    model = timm.create_model("resnet10t", num_classes=3, channels=(8, 8, 8, 8))
    assert not model.grad_checkpointing
    _checkpointed((model, Record()))
    assert model.grad_checkpointing
    _checkpointed((torch.nn.Linear(2, 2), Record()))
    assert "no gradient checkpointing" in caplog.text
