"""benchmarks/bench_gpu.py on CPU: embedded models, per-model rows written as it goes, OOM rows, the study's
batch, and the estimate reading its output (a few tiny steps: seconds)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"
TINY = ["--device", "cpu", "--models", "", "--warmup", "0", "--repeats", "1", "--decode-images", "2"]


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # a subprocess that imports torch and timm: ~10 s on a busy 2-core machine
def test_embedded_models_run_and_the_dry_run_reads_their_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--embedded", "mixer_p8,resnet10t_w24_ls",
                          "--batch", "4", "--eval-batch", "4", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["models"]}
    assert list(rows) == ["mixer_p8", "resnet10t_w24_ls"]  # zoo_mixer_p4 is known: the archs are imported
    for r in rows.values():
        assert r["train_img_s"] > 0 and r["eval_img_s"] > 0 and r["batch"] == 4
        assert r["train_peak_bytes"] is None and r["eval_peak_bytes"] is None  # CPU: no allocator statistics
    assert data["decode_img_s"] > 0 and not list(tmp_path.glob(".*.tmp"))  # renamed into place
    # the dry run finds both models (by id) and leaves nothing out
    study = ["--set", "zoo.embedded=['mixer_p8','resnet10t_w24_ls']", "--set", "zoo.random_teachers=[]",
             "--set", "transfer.pairs='explicit'",
             "--set", "transfer.explicit=[['mixer_p8','resnet10t_w24_ls']]", "--set", "transfer.methods=['kl','kl_dp']",
             "--set", "multi_teacher.enabled=false", "--set", "hparam_search.enabled=false",
             "--set", "robustness.enabled=false", "--set", f"study.results_root='{tmp_path / 'r'}'"]
    assert cli_main(["run", *study, "--stage", "predict,transfer", "--dry-run", "--bench", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(4 job(s) in 3 task(s))" in text and "missing" not in text  # 2 predict + one pack of 2 transfers


def test_the_study_batch_is_the_default(tmp_path):
    mod = _module()
    assert mod.study_batches(None)[:2] == (256, 256)  # the transfer defaults
    cfg = tmp_path / "s.toml"
    cfg.write_text("[transfer]\nbatch_size = 96\neval_batch_size = 64\n")
    assert mod.study_batches(str(cfg))[:2] == (96, 64)


def test_an_out_of_memory_model_gets_its_row_and_the_next_one_runs(tmp_path, monkeypatch):
    mod = _module()
    seen = []
    real_train, real_write = mod._measure_train, mod.write_json

    def train(model, x, *args, **kwargs):
        if type(model).__name__ == "MlpMixer":
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_train(model, x, *args, **kwargs)

    def write(path, data):  # the file as it is after each model
        real_write(path, data)
        seen.append([r["model"] for r in json.loads(Path(path).read_text())["models"]])

    monkeypatch.setattr(mod, "_measure_train", train)
    monkeypatch.setattr(mod, "write_json", write)
    out = tmp_path / "b.json"
    assert mod.main([*TINY, "--embedded", "mixer_p8,resnet10t_w24_ls", "--batch", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]
    assert rows[0]["model"] == "mixer_p8" and rows[0]["oom"] is True and rows[0]["oom_in"] == "train"
    assert rows[0]["batch"] == 4 and rows[0]["train_img_s"] is None and rows[0]["eval_img_s"] > 0
    assert rows[1]["model"] == "resnet10t_w24_ls" and rows[1]["train_img_s"] > 0 and "oom" not in rows[1]
    assert rows[1]["eval_batch"] == 256  # the transfer default
    assert seen == [["mixer_p8"], ["mixer_p8", "resnet10t_w24_ls"]]  # written after every model


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    mod = _module()
    out = tmp_path / "b.json"
    mod.write_json(out, {"models": [1]})
    monkeypatch.setattr(mod.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        mod.write_json(out, {"models": [1, 2]})
    assert json.loads(out.read_text()) == {"models": [1]} and not list(tmp_path.glob(".*.tmp"))
