"""End to end: a micro study through the CLI on a local Ray instance of 2 CPUs.

Covers the pipeline issue's acceptance: a run end to end, a rerun that does no work, a deleted result
that makes exactly its job run again, a truncated Parquet file redone, a failing job recorded while
the others complete, and bad config that exits 2 having written nothing.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MICRO = """
[study]
name = "micro"
results_root = "{root}"
seed = 0

[data.generated]
num_superclasses = 2
classes_per_superclass = 3
image_size = 16
n_train = 240
n_eval = 120

[zoo]
embedded = ["resnet10t_w16", "convnext_atto_p2", "mixer_p8"]
epochs_scale = 0.2
random_teachers = ["resnet10t_w16"]
{extra_models}

[predict]
batch_size = 64

[transfer]
enabled = {transfer}
methods = ["kl", "kl_dp"]
n_pairs = 1
epochs = 1
batch_size = 32
transfer_fraction = 0.5

[multi_teacher]
enabled = {transfer}
students = ["mixer_p8"]
teachers = ["resnet10t_w16", "convnext_atto_p2"]
modes = ["sequential", "parallel", "soup"]
epochs = 1

[hparam_search]
enabled = {transfer}
methods = ["kl_dp"]
n_pairs = 1
grid = {{lr = [1e-3, 1e-4]}}
epochs = 1

[ray]
num_cpus = 2
"""


def write_config(tmp: Path, *, transfer: bool = False, extra_models: str = "") -> Path:
    root = tmp / "runs"
    cfg = tmp / "micro.toml"
    cfg.write_text(MICRO.format(root=root, transfer=str(transfer).lower(), extra_models=extra_models))
    return cfg


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from pipelines.runner import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def run_cli(*args: str) -> int:
    from pipelines.cli import main

    return main(list(args))


def mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def test_micro_study_end_to_end_and_resume(tmp_path, ray_local, capsys):
    cfg = write_config(tmp_path, transfer=True)
    root = tmp_path / "runs"
    assert run_cli("run", str(cfg), "--no-progress") == 0
    # every stage wrote its tables
    assert len(list((root / "zoo" / "models").glob("*.parquet"))) == 4
    assert len(list((root / "zoo" / "weights").glob("*.safetensors"))) == 3
    assert len(list((root / "predictions").glob("*.parquet"))) == 4
    pairs = pq.read_table(root / "scores" / "pairs.parquet")
    assert pairs.num_rows == 3 * 2 + 3  # all ordered trained pairs + noise-floor rows
    # the semantics stage (Fig 2b): one embedding per class, one row per pair and X
    emb = pq.read_table(root / "classes" / "embeddings.parquet")
    sem = pq.read_table(root / "scores" / "pair_semantics.parquet")
    assert emb.num_rows == 6 and set(emb.column("superclass_name").to_pylist()) == {"circle", "square"}
    assert sem.num_rows == pairs.num_rows * 5 and set(sem.column("encoder").to_pylist()) == {"lexical"}
    from analysis.db import connect

    with connect(root) as db:
        fig2b = db.named("fig2b_semantic_similarity").to_pylist()
    assert fig2b and all(r["same_super_chance_pct"] == pytest.approx(100 * 2 * (3 * 2) / (6 * 5)) for r in fig2b)
    summaries = [pq.read_table(p).to_pylist()[0] for p in (root / "transfers").glob("*/summary.parquet")]
    single = [s for s in summaries if s["mode"] == "single"]
    # 1 sampled pair x 2 methods, plus each multi-teacher teacher alone (the Tab 4 baseline, kl_dp)
    assert len(single) == 4 and {s["method"] for s in single} == {"kl", "kl_dp"}
    baselines = {(s["teacher"], s["student"]) for s in single if s["student"] == "mixer_p8" and s["epochs"] == 1
                 and s["method"] == "kl_dp"}
    assert {("resnet10t_w16", "mixer_p8"), ("convnext_atto_p2", "mixer_p8")} <= baselines
    multi = {s["mode"]: s for s in summaries if s["study_part"] == "multi_teacher" and s["mode"] != "single"}
    assert set(multi) == {"sequential", "parallel", "soup"}
    # the single-teacher baselines of the multi-teacher stage are kept apart from the study's transfers
    assert {s["study_part"] for s in single if s["method"] == "kl_dp" and s["student"] == "mixer_p8"
            and (s["teacher"], s["student"]) in baselines} >= {"multi_teacher"}
    assert multi["sequential"]["teachers"] == ["resnet10t_w16", "convnext_atto_p2"] or sorted(
        multi["sequential"]["teachers"]) == ["convnext_atto_p2", "resnet10t_w16"]
    grid_rows = [pq.read_table(p).to_pylist()[0] for p in (root / "hparams").glob("*.parquet")]
    assert len(grid_rows) == 2 and sorted(r["lr"] for r in grid_rows) == pytest.approx(
        sorted([1e-3 * 32 / 256, 1e-4 * 32 / 256]))  # one row per grid point, lr scaled by batch/256
    capsys.readouterr()
    assert run_cli("hparams", str(root)) == 0
    best_out = capsys.readouterr().out
    top = max(r["delta_last"] for r in grid_rows)
    winners = [r["lr"] * 256 / 32 for r in grid_rows if r["delta_last"] == top]
    assert "[transfer.hparams.kl_dp]" in best_out
    assert any(f"lr = {w!r}" in best_out for w in winners)
    assert (root / "report" / "index.html").is_file()
    assert (root / "config.toml").is_file() and (root / "environment.json").is_file()

    # a second run does no work and finishes within seconds
    before = mtimes(root)
    t0 = time.perf_counter()
    assert run_cli("run", str(cfg), "--no-progress", "--stage", "zoo,predict,score,transfer,multi_teacher,hparam") == 0
    assert time.perf_counter() - t0 < 30
    assert mtimes(root) == before
    out = capsys.readouterr().out
    assert "ran" in out

    # deleting one result makes exactly that job run again
    victim = root / "predictions" / "model=mixer_p8.parquet"
    victim.unlink()
    assert run_cli("run", str(cfg), "--no-progress", "--stage", "zoo,predict,score,transfer") == 0
    after = mtimes(root)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"predictions/model=mixer_p8.parquet"}

    # a changed spec reruns the jobs it changes, even though their output paths are the same
    before = mtimes(root)
    assert run_cli("run", str(cfg), "--no-progress", "--stage", "zoo", "--set", "zoo.epochs_scale=0.25") == 0
    after = mtimes(root)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {f"zoo/models/{m}.parquet" for m in ("resnet10t_w16", "convnext_atto_p2", "mixer_p8")}

    # a truncated Parquet file is detected and redone
    pairs_file = root / "scores" / "pairs.parquet"
    data = pairs_file.read_bytes()
    pairs_file.write_bytes(data[: len(data) // 2])
    assert run_cli("run", str(cfg), "--no-progress", "--stage", "score") == 0
    assert pq.read_table(pairs_file).num_rows == pairs.num_rows


def test_failing_job_is_recorded_and_others_complete(tmp_path, ray_local, capsys):
    # a checkpoint that exists (so planning accepts it) but is not a weights file: the zoo job fails
    broken = tmp_path / "weights.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    bad = textwrap.dedent(
        f"""
        [[zoo.models]]
        id = "broken"
        source = "local"
        arch = "resnet10t"
        checkpoint = "{broken}"
        """
    )
    cfg = write_config(tmp_path, extra_models=bad)
    root = tmp_path / "runs"
    code = run_cli("run", str(cfg), "--no-progress", "--stage", "zoo,predict")
    assert code == 1
    assert len(list((root / "zoo" / "models").glob("*.parquet"))) == 4  # the others completed
    failures = pq.read_table(root / "failures").to_pylist()
    zoo_fail = [f for f in failures if f["stage"] == "zoo"]
    assert len(zoo_fail) == 1 and "broken" in zoo_fail[0]["error"]
    assert zoo_fail[0]["attempts"] == 1 and "Traceback" in zoo_fail[0]["traceback"]
    # the broken model's prediction job is skipped with a reason, not run
    assert any(f["stage"] == "predict" and f["attempts"] == 0 for f in failures)
    capsys.readouterr()
    assert run_cli("status", str(cfg)) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "zoo" in out


@pytest.mark.parametrize(
    "override, needle",
    [
        ("transfer.epochs=0", "transfer.epochs"),
        ("transfer.methods=['kl','magic']", "magic"),
        ("study.colour=1", "study.colour"),
        ("data.kind=web", "data.kind"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, override, needle):
    cfg = write_config(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_cli("run", str(cfg), "--set", override)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert run_cli("run", str(cfg), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "zoo" in out and "predict" in out and "score" in out
    zoo_line = next(line for line in out.splitlines() if line.startswith("zoo"))
    assert zoo_line.split()[1:4] == ["4", "0", "4"]
    assert not (tmp_path / "runs").exists()


def test_unknown_stage_is_misuse(tmp_path, capsys):
    cfg = write_config(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_cli("run", str(cfg), "--stage", "zoo,train")
    assert exc.value.code == 2
    assert "train" in capsys.readouterr().err
