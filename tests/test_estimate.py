"""The accelerator-hours estimate of --dry-run --bench, on a hand-computed study."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from pipelines.estimate import estimate_hours
from pipelines.jobs import Job


def _job(method: str, mode: str = "single", teachers=("t",), epochs: int = 2, eval_every: int = 1) -> Job:
    config = {"method": method, "mode": mode, "epochs": epochs, "eval_every": eval_every, "transfer_fraction": 0.5,
              "transfer_per_class": None}
    spec = {"student": {"model_id": "s", "spec": {}}, "teachers": [{"model_id": t, "spec": {}} for t in teachers],
            "config": config}
    return Job("transfer", spec, {"summary": f"transfers/{method}{mode}/summary.parquet"})


RATES = {"s": {"train_img_s": 100.0, "eval_img_s": 400.0}, "t": {"train_img_s": 50.0, "eval_img_s": 200.0},
         "u": {"train_img_s": 50.0, "eval_img_s": 100.0}}


def test_estimate_by_hand():
    # kl: 2 epochs x 1000 images x (1/100 + 1/200) + 2 evals x 4000 / 400 = 30 + 20 = 50 s
    hours, unknown = estimate_hours([_job("kl")], RATES, n_train_total=2000, n_eval=4000)
    assert unknown == 0 and hours * 3600 == pytest.approx(50.0)
    # kl_dp adds the frozen anchor's forward: + 2 x 1000 / 400 = 5 s
    assert estimate_hours([_job("kl_dp")], RATES, 2000, 4000)[0] * 3600 == pytest.approx(55.0)
    # sequential with two teachers: one phase each; eval_every 2 -> one evaluation per phase
    # phase t: 2*1000*(1/100 + 1/200 + 1/400) + 4000/400 = 35 + 10; phase u: 2*1000*(1/100+1/100+1/400) + 10 = 45 + 10
    seq = _job("kl_dp", mode="sequential", teachers=("t", "u"), eval_every=2)
    assert estimate_hours([seq], RATES, 2000, 4000)[0] * 3600 == pytest.approx(45.0 + 55.0)
    # a model without figures is reported, not guessed
    assert estimate_hours([_job("kl", teachers=("nobody",))], RATES, 2000, 4000) == (0.0, 1)


def test_dry_run_prints_the_estimate(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    rows = [{"model": m, "train_img_s": 1000.0, "eval_img_s": 4000.0} for m in
            ("vit_p8_d96", "resnet10t_w24_ls", "convnext_atto_p2", "mixer_p8")]
    bench.write_text(json.dumps({"device": "cuda", "device_name": "test GPU", "models": rows}))
    code = main(["run", "--dry-run", "--bench", str(bench), "--set", f"study.results_root={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "estimated accelerator time of the planned transfers" in out and "test GPU" in out
    assert "planned after the score stage" in out  # the demo's sampled pairs are not counted yet
    assert not (tmp_path / "r").exists()


def test_bad_bench_file_is_refused(tmp_path, capsys):
    bad = tmp_path / "b.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as info:
        main(["run", "--dry-run", "--bench", str(bad), "--set", f"study.results_root={tmp_path / 'r'}"])
    assert info.value.code == 2 and "not a bench_gpu.py JSON file" in capsys.readouterr().err
