"""How the runner forms packs from pending jobs: one pair, several students of one teacher up to a limit,
a memory budget on GPU, only jobs whose inputs exist; and the planner's per-model memory estimate."""

from __future__ import annotations

import collections

import pytest

from pipelines.jobs import Job
from pipelines.packs import carrier_for, take_pack


def _job(i: int, student: str, pack: str = "k", cost: float = 0.0, inputs: tuple[str, ...] | None = None,
         act: float = 0.0, shared: float = 0.0) -> Job:
    return Job("transfer", {"i": i, "student": student}, {"summary": f"transfers/{i}/summary.parquet"},
               inputs=inputs if inputs is not None else (f"zoo/{student}.safetensors", "zoo/teacher.safetensors"),
               pack=pack, pack_group=student, pack_cost=cost, pack_activation=act, pack_shared=shared)


def _todo(jobs):
    return collections.deque((j, 1) for j in jobs)


def test_one_pair_per_pack_by_default_and_several_students_up_to_the_limit():
    jobs = [_job(0, "a"), _job(1, "b"), _job(2, "a"), _job(3, "c"), _job(4, "b"), _job(5, "a", pack="other")]
    todo = _todo(jobs[1:])
    assert [j.spec["i"] for j in take_pack(jobs[0], todo, 16)] == [0, 2]  # student a only
    assert [j.spec["i"] for j, _ in todo] == [1, 3, 4, 5]  # the rest kept, in order
    todo = _todo(jobs[1:])
    group = take_pack(jobs[0], todo, 16, max_groups=2)
    assert [j.spec["i"] for j in group] == [0, 1, 2, 4]  # students a and b; c would be a third
    assert [j.spec["i"] for j, _ in todo] == [3, 5]
    carrier = carrier_for(group)  # the union of the members' inputs, each once
    assert carrier.inputs == ("zoo/a.safetensors", "zoo/teacher.safetensors", "zoo/b.safetensors")
    assert carrier.name == "4 transfers into 2 students"


def test_memory_budget_and_readiness_bound_a_pack():
    jobs = [_job(0, "a", cost=4.0), _job(1, "a", cost=4.0), _job(2, "b", cost=1.0), _job(3, "a", cost=4.0)]
    todo = _todo(jobs[1:])
    # budget 9: 0 (4) + 1 (4) fit, 2 (1) fits at 9, 3 (4) would make 13
    assert [j.spec["i"] for j in take_pack(jobs[0], todo, 16, max_groups=2, memory_budget=9.0)] == [0, 1, 2]
    assert [j.spec["i"] for j, _ in todo] == [3]
    # the first member always runs, even alone above the budget
    assert [j.spec["i"] for j in take_pack(jobs[3], collections.deque(), 16, memory_budget=1.0)] == [3]
    # a job of another student whose inputs are not there yet does not join; it waits its turn
    todo = _todo(jobs[1:])
    group = take_pack(jobs[0], todo, 16, max_groups=2, ready=lambda j: j.pack_group != "b")
    assert [j.spec["i"] for j in group] == [0, 1, 3] and [j.spec["i"] for j, _ in todo] == [2]


def test_pack_memory_counts_every_state_but_only_the_largest_activations_and_the_teacher_once():
    from pipelines.memory import pack_bytes

    # members step one after another: (train, activations) = (10, 6), (12, 8), (5, 1); teacher forward 3
    # by hand: 3 + (10 - 6) + (12 - 8) + (5 - 1) + max(6, 8, 1) = 3 + 4 + 4 + 4 + 8 = 23 (the old sum: 27)
    assert pack_bytes([(10.0, 6.0), (12.0, 8.0), (5.0, 1.0)], shared=3.0) == 23.0
    assert pack_bytes([(10.0, 6.0)], shared=3.0) == 13.0 and pack_bytes([], shared=3.0) == 3.0
    jobs = [_job(0, "a", cost=10.0, act=6.0, shared=3.0), _job(1, "a", cost=12.0, act=8.0, shared=3.0),
            _job(2, "a", cost=5.0, act=1.0, shared=3.0)]
    todo = _todo(jobs[1:])
    assert [j.spec["i"] for j in take_pack(jobs[0], todo, 16, memory_budget=23.0)] == [0, 1, 2]
    todo = _todo(jobs[1:])  # one byte less: the third member (23) no longer fits, the second (3+4+4+8=19) does
    assert [j.spec["i"] for j in take_pack(jobs[0], todo, 16, memory_budget=22.0)] == [0, 1]


def test_retried_jobs_and_other_inputs_of_the_same_student_run_alone():
    first = _job(0, "a")
    retry = _job(1, "a")
    odd = _job(2, "a", inputs=("zoo/a_other.safetensors",))
    todo = collections.deque([(retry, 2), (odd, 1)])
    assert take_pack(first, todo, 16, max_groups=4) == [first]
    assert len(todo) == 2


def test_memory_estimate_grows_with_batch_and_model_and_matches_hand_count():
    torch = pytest.importorskip("torch")
    from pipelines.memory import train_memory_bytes

    import zoo_study  # noqa: F401
    import timm

    small = train_memory_bytes("resnet10t", {"channels": [16, 32, 64, 128]}, 10, [3, 32, 32], 8)
    assert train_memory_bytes("resnet10t", {"channels": [16, 32, 64, 128]}, 10, [3, 32, 32], 64) > small
    assert train_memory_bytes("resnet18", {"channels": [16, 32, 64, 128]}, 10, [3, 32, 32], 8) > small
    # by hand on the CPU (real tensors, not meta): parameters x 12 bytes + every leaf output x 4 bytes
    model = timm.create_model("resnet10t", num_classes=10, channels=(16, 32, 64, 128))
    n_params = sum(p.numel() for p in model.parameters())
    outs = [0]
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.__setitem__(0, outs[0] + o.numel() * 4))
             for m in model.modules() if not list(m.children())]
    model.train()(torch.zeros(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert small == pytest.approx(12 * n_params + outs[0])


def test_memory_estimate_parts_match_a_hand_count_on_real_tensors():
    torch = pytest.importorskip("torch")
    from pipelines.memory import model_memory
    from zoo_study.zoo.study_model import RandomModel

    import zoo_study  # noqa: F401
    import timm

    kwargs = {"channels": [16, 32, 64, 128]}
    est = model_memory(RandomModel("r", {"arch": "resnet10t", "model_kwargs": kwargs,
                                         "data_config": {"input_size": [3, 32, 32]}}), 10, 4)
    model = timm.create_model("resnet10t", num_classes=10, channels=(16, 32, 64, 128))
    n_params = sum(p.numel() for p in model.parameters())
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() * 4))
             for m in model.modules() if not list(m.children())]
    model.train()(torch.zeros(4, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert est.weights == 4 * n_params and est.state == 12 * n_params
    assert est.activations == sum(sizes) and est.peak_output == max(sizes)
    assert est.train == 12 * n_params + sum(sizes)
    assert est.forward == 4 * n_params + 2 * max(sizes)  # a no_grad teacher: weights, one layer's in and out


def test_planner_gives_transfer_jobs_a_student_group_and_on_gpu_a_memory_cost(tmp_path):
    pytest.importorskip("torch")
    from pipelines.study import plan_stage
    from zoo_study.config import load_config

    base = [f"study.results_root='{tmp_path}'", "transfer.pairs='explicit'", "transfer.methods=['kl', 'kl_dp']",
            "transfer.explicit=[['resnet10t_w16', 'mixer_p8'], ['resnet10t_w16', 'vit_p8_d96']]"]
    cpu = plan_stage(load_config(None, base), "transfer")
    assert {j.pack_group for j in cpu} == {"mixer_p8", "vit_p8_d96"}
    assert len({j.pack for j in cpu}) == 1  # one teacher, the same batches: one key, two groups
    assert all(j.pack_cost == 0.0 for j in cpu)  # CPU jobs: no estimate (and no torch at planning)
    # GPU jobs get one even without ray.pack_gpu_memory_gb: the runner then sizes packs by the device
    gpu = plan_stage(load_config(None, base + ["ray.gpus_per_job=1"]), "transfer")
    costs = {j.pack_group: j.pack_cost for j in gpu}
    assert all(c > 0 for c in costs.values()) and costs["mixer_p8"] != costs["vit_p8_d96"]
    assert all(0 < j.pack_activation < j.pack_cost and j.pack_shared > 0 for j in gpu)
    assert len({j.pack_shared for j in gpu}) == 1  # one teacher
    assert [j.job_id for j in gpu] == [j.job_id for j in cpu]  # packing settings never change a job id


def test_planning_reads_only_the_pairs_of_the_studys_own_models(tmp_path):
    """A root shared with another study (related.toml beside the demo) may hold pairs of models this study
    does not have; sampling transfer pairs from them would name unknown models."""
    from helpers.analysis_fixtures import RootBuilder
    from pipelines.study import Study, scored_pairs
    from zoo_study.config import load_config
    from zoo_study.store import ResultsLayout

    b = RootBuilder(tmp_path)
    for t, s in (("resnet10t_w16", "mixer_p8"), ("mixer_p8_mixup", "mixer_p8"), ("mixer_p8", "not_in_zoo")):
        b.pair_row(t, s, acc_t=0.6, acc_s=0.5, rho_pos=0.1)
    b.write_scores()
    cfg = load_config(None, [f"study.results_root='{tmp_path}'"])
    layout = ResultsLayout(tmp_path)
    assert scored_pairs(layout).num_rows == 3
    kept = Study.from_config(cfg).scores()  # read once, only the study's models
    assert list(zip(kept.column("teacher").to_pylist(), kept.column("student").to_pylist())) == [
        ("resnet10t_w16", "mixer_p8")]


class OutOfMemoryError(RuntimeError):
    """Named as torch's: pipelines.backends.is_oom tells it by name (the driver never imports torch)."""


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - with its traceback, as a worker hands it over
        return caught


def test_each_member_of_a_pack_gets_its_own_typed_outcome():
    """A pack's result is one MemberResult per member id: an ok member its outputs by name, a failed one its
    own error line and traceback, an OOM member kind 'oom' (the runner retries it alone); a member the
    result lacks, or holds untyped, fails with a line that says so."""
    from pipelines.backends import Outcome
    from pipelines.packs import MemberResult, member_outcomes

    jobs = [_job(i, "a") for i in range(5)]
    ids = [j.job_id for j in jobs]
    results = {ids[0]: MemberResult(ids[0], {"summary": b"row"}),
               ids[1]: MemberResult.failed(ids[1], _raised(RuntimeError("mat1 and mat2 shapes (its own crash)"))),
               ids[2]: MemberResult.failed(ids[2], _raised(OutOfMemoryError("CUDA out of memory"))),
               ids[3]: {"summary": b"row"}}  # untyped; ids[4] missing
    got = member_outcomes(jobs, Outcome("ok", outputs=results, where="host pid 1", seconds=3.0))
    assert [j for j, _ in got] == jobs
    kinds = [(o.kind, o.outputs, o.error) for _, o in got]
    assert kinds[0] == ("ok", {"summary": b"row"}, "")
    assert kinds[1] == ("error", None, "RuntimeError: mat1 and mat2 shapes (its own crash)")
    assert "in _raised" in got[1][1].traceback and "its own crash" in got[1][1].traceback
    assert kinds[2] == ("oom", None, "OutOfMemoryError: CUDA out of memory")
    assert kinds[3][:2] == ("error", None) and "dict instead of a MemberResult" in kinds[3][2]
    assert kinds[4][:2] == ("error", None) and "returned no result for this member" in kinds[4][2]
    assert all(o.where == "host pid 1" and o.seconds == 3.0 for _, o in got)  # the pack's, for every member


def test_a_member_that_fails_in_a_pack_is_recorded_alone_and_the_others_are_written(tmp_path):
    """Through the runner: a pack of 3 whose middle member raises; the others' outputs are written, its
    failure record holds its own error and traceback, and a rerun runs only that member (alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.packs import MemberResult, carrier_members
    from pipelines.runner import run_jobs

    calls: list[list[int]] = []

    def member(spec: dict) -> dict:
        if spec["value"] == 1:
            raise ValueError(f"value {spec['value']} is refused by its own objective")
        return {"row": pa.table({"value": [spec["value"]]})}

    def alone(spec, inputs, ctx):
        calls.append([spec["value"]])
        return member(spec)

    def packed(spec, inputs, ctx):
        members = carrier_members(spec)
        calls.append([m.spec["value"] for m in members])
        out = {}
        for m in members:
            assert m.outputs == ["row"]  # each member's own output names travel with the carrier
            try:
                out[m.job_id] = MemberResult(m.job_id, member(m.spec))
            except ValueError as exc:
                out[m.job_id] = MemberResult.failed(m.job_id, exc)
        return out

    jobs = [Job("_t.packed", {"value": i}, {"row": f"m/{i}.parquet"}, pack="k", pack_group="s") for i in range(3)]
    executors = {"_t.packed": alone, "_t.packed_pack": packed}
    report = run_jobs(jobs, tmp_path, use_ray=False, executors=executors, pack_size=8, progress=False)
    assert calls == [[0, 1, 2]] and report.ran == 2 and report.failed == 1
    (failure,) = report.failures
    assert failure.job_id == jobs[1].job_id
    assert failure.error == "ValueError: value 1 is refused by its own objective"
    assert "in member" in failure.traceback and "in packed" in failure.traceback
    assert [pq.read_table(tmp_path / f"m/{i}.parquet").to_pylist() for i in (0, 2)] == [[{"value": 0}], [{"value": 2}]]
    assert not (tmp_path / "m/1.parquet").exists()
    calls.clear()
    run_jobs(jobs, tmp_path, use_ray=False, executors=executors, pack_size=8, progress=False)
    assert calls == [[1]]  # only the failed member, and alone: a pack of one is a job


def test_pack_compatibility_is_decided_once_by_the_planner_and_only_read_after(tmp_path, monkeypatch):
    """pack_key runs once per transfer job, at planning (Job.pack); the estimate and the runner form packs
    from Job.pack and never compute it again."""
    pytest.importorskip("torch")
    import zoo_study.transfer.config as tconfig
    from pipelines.estimate import Bench, DataSizes, estimate
    from pipelines.packs import MemberResult, carrier_members
    from pipelines.runner import run_jobs
    from pipelines.study import plan_stage
    from zoo_study.config import load_config

    calls = []
    real = tconfig.pack_key
    monkeypatch.setattr(tconfig, "pack_key", lambda c: calls.append(c) or real(c))
    cfg = load_config(None, [f"study.results_root='{tmp_path}'", "transfer.pairs='explicit'",
                             "transfer.methods=['kl', 'kl_dp']",
                             "transfer.explicit=[['resnet10t_w16', 'mixer_p8'], ['resnet10t_w16', 'vit_p8_d96']]"])
    jobs = plan_stage(cfg, "transfer")
    assert len(jobs) == 4 and len(calls) == 4 and len({j.pack for j in jobs}) == 1

    def refuse(c):
        raise AssertionError("pack compatibility computed again after planning")

    monkeypatch.setattr(tconfig, "pack_key", refuse)
    bench = Bench({m: {"train_img_s": 10.0, "eval_img_s": 40.0} for m in ("resnet10t_w16", "mixer_p8", "vit_p8_d96")},
                  "cuda")
    assert estimate(jobs, bench, DataSizes((60, 60), 40), pack_size=16, pack_students=2).tasks == 1
    assert estimate(jobs, bench, DataSizes((60, 60), 40), pack_size=16, pack_students=1).tasks == 2
    for rel in {rel for j in jobs for rel in j.inputs}:  # the runner only needs the inputs to exist
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    packs = []

    def packed(spec, inputs, ctx):
        packs.append(sorted(m.job_id for m in carrier_members(spec)))
        return {m.job_id: MemberResult(m.job_id, error="stub: not trained") for m in carrier_members(spec)}

    report = run_jobs(jobs, tmp_path, use_ray=False, pack_size=16, pack_students=2, progress=False,
                      executors={"transfer": lambda *a: {}, "transfer_pack": packed})
    assert packs == [sorted(j.job_id for j in jobs)] and report.failed == 4
