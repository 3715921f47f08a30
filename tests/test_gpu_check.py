"""``benchmarks/gpu_check.py``: its ``--cpu-dry`` run (what CI can run of the first-GPU check), the
resilience of its steps (a failing step or model is a row, later steps still run) and the GPU idle share
computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpu_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out), "--cpu-dry"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    steps = {r["step"]: r for r in doc["steps"]}
    assert list(steps) == ["device", "rehearsal", "bench:test_vit", "bench:test_resnet", "profile"]
    assert all(r["status"] == "ok" for r in doc["steps"]), doc["steps"]
    assert doc["mode"] == "cpu-dry" and doc["device"]["cuda"] is False
    reh = steps["rehearsal"]
    # 2 archs in a cycle (2 pairs) x 3 methods, and the uncached predictions
    assert reh["cached"]["transfers_ok"] == 6 and reh["cached"]["jobs_failed"] == 0
    assert reh["uncached"]["exit"] == 0
    # on CPU in fp32 the cached predictions are timm's own (the GPU run reports bf16's flips here)
    assert all(v.startswith("6/6 top-1 equal") for v in reh["cached"]["vs_timm_fp32"].values()), reh["cached"]
    assert steps["bench:test_vit"]["train_img_s"] > 0 and steps["bench:test_vit"]["batch"] == 2
    for tag in ("cached", "uncached"):
        prof = steps["profile"][tag]
        assert prof["transfers_ok"] == 6 and prof["jobs_failed"] == 0 and prof["gpu_idle_share"] is None
    md = (out / "gpu_check.md").read_text()
    assert "| rehearsal | ok |" in md and "| profile | ok |" in md


def test_a_failing_step_is_a_row_and_later_steps_run(tmp_path):
    res = gpu_check.Result(tmp_path, "cpu-dry")

    def boom():
        raise MemoryError("CUDA out of memory (injected)")

    res.step("first", boom)
    res.step("second", lambda: {"value": 3})
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["step"], r["status"]) for r in doc["steps"]] == [("first", "failed"), ("second", "ok")]
    assert doc["steps"][0]["error"] == "MemoryError: CUDA out of memory (injected)"
    assert doc["steps"][1]["value"] == 3
    assert "| first | failed |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.timeout(120)
def test_a_model_that_bench_gpu_cannot_build_is_its_own_failed_row(tmp_path):
    res = gpu_check.Result(tmp_path, "cpu-dry")
    row = res.step("bench:no_such_model", lambda: gpu_check.bench("no_such_model_xyz", tmp_path, True, timeout=100))
    assert row["status"] == "failed" and "bench_gpu.py exit" in row["error"] and "no_such_model_xyz" in row["error"]


def test_gpu_idle_share_is_wall_minus_the_union_of_kernel_intervals():
    cuda, cpu = SimpleNamespace(name="CUDA"), SimpleNamespace(name="CPU")

    def ev(start, end, dev=cuda):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=dev)

    # kernels [0, 10] and [5, 20] overlap (busy 20), [30, 40] adds 10; the CPU event is not GPU time:
    # busy 30 us of a 100 us wall -> idle 0.7
    prof = SimpleNamespace(events=lambda: [ev(30, 40), ev(0, 10), ev(5, 20), ev(50, 99, cpu)])
    assert gpu_check._idle_share(prof, 100.0) == pytest.approx(0.7)
    assert gpu_check._idle_share(SimpleNamespace(events=lambda: [ev(0, 5, cpu)]), 100.0) is None


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--out", str(f), "--cpu-dry"])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
