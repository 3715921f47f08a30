"""The first-GPU-machine check (issue 21, item 9): one prepared script, <= 8 minutes, one markdown and one
JSON result in ``--out``.

    python benchmarks/gpu_check.py --out gpu_check/            # on the GPU machine (no network needed)
    python benchmarks/gpu_check.py --out /tmp/gc --cpu-dry     # the same steps, tiny, on CPU (CI runs this)

Steps, each one a row of the result (a step's failure is its row, never the script's crash; the JSON is
rewritten after every step, so a killed run keeps what it measured):

1. ``device``: torch / timm versions, the device, its memory, bf16 support.
2. ``rehearsal``: the real-shape rehearsal (``tests/helpers/rehearsal.py``) as a user runs it, in a
   subprocess: every registered method on a cycle of the tiny real archs (packs), a multi-teacher run, the
   report, with the decoded-image cache; then the same predictions without the cache. Rows count the
   transfers that finished and list the distinct errors of those that failed.
3. ``bench:<model>``: ``benchmarks/bench_gpu.py`` through its CLI for one model at the study's batch (256),
   one subprocess per model (an OOM or crash is that model's row), with the process's peak CUDA memory.
4. ``profile``: one pair's pack of 6 transfers under ``torch.profiler``: the GPU's idle share (wall time
   minus the union of kernel intervals, over wall time) with and without the cache; on CPU, the top ops.

Why subprocesses for 2 and 3: a CUDA error or OOM poisons the process; each must stay its own row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_MODELS = ("vit_base_patch16_224", "senet154", "mixer_l16_224", "xcit_large_24_p16_224")  # paper students
DRY_BENCH_MODELS = ("test_vit", "test_resnet")  # timm's test models: tiny, any input
PACK_METHODS = ["kl", "xe_kl", "xe_kl_ls", "kl_topk", "xe_kl_mcl", "kl_dp"]
PEAK_TAG = "GPU_CHECK_PEAK "
BUDGET_S = 360  # rehearsal + benches; the profile step adds ~1-2 min: the whole check stays under 8 minutes

# runs bench_gpu.py's CLI in this interpreter, then prints the peak CUDA memory it reached
_BENCH_WRAPPER = f"""
import json, runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
finally:
    import torch
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    print("{PEAK_TAG}" + json.dumps({{"peak_gb": peak}}), flush=True)
sys.exit(code)
"""


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename: a reader never sees half a result."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Result:
    """The rows so far, written as JSON and markdown after every step."""

    def __init__(self, out: Path, mode: str) -> None:
        self.out, self.mode, self.rows, self.t0 = out, mode, [], time.time()
        self.device: dict[str, Any] = {}

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one step; its exception becomes a ``failed`` row with the error's last line."""
        print(f"== {name}", flush=True)
        t = time.time()
        try:
            row = {"step": name, "status": "ok", **fn()}
        except Exception as exc:  # a step's failure is its row, not the script's end
            tb = traceback.format_exc().strip().splitlines()
            row = {"step": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500],
                   "where": tb[-3:-1]}
        row["seconds"] = round(time.time() - t, 2)
        self.rows.append(row)
        print(f"   {row['status']} in {row['seconds']} s: "
              f"{ {k: v for k, v in row.items() if k not in ('step', 'status', 'seconds')} }", flush=True)
        self.save()
        return row

    def save(self) -> None:
        doc = {"mode": self.mode, "device": self.device, "total_s": round(time.time() - self.t0, 1), "steps": self.rows}
        _write_atomic(self.out / "gpu_check.json", json.dumps(doc, indent=1, default=str))
        _write_atomic(self.out / "gpu_check.md", self.markdown(doc))

    @staticmethod
    def markdown(doc: dict[str, Any]) -> str:
        dev = doc["device"]
        lines = [f"# gpu_check ({doc['mode']})", "",
                 f"Device: {dev.get('name', '?')}; torch {dev.get('torch', '?')}, timm {dev.get('timm', '?')}; "
                 f"total {doc['total_s']} s", "", "| step | status | s | detail |", "| --- | --- | ---: | --- |"]
        for r in doc["steps"]:
            detail = {k: v for k, v in r.items() if k not in ("step", "status", "seconds", "where")}
            text = "; ".join(f"{k}={v}" for k, v in detail.items()).replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {text[:400]} |")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- steps
def device_info() -> dict[str, Any]:
    """What runs here: versions, the device, its memory and bf16 support."""
    import torch

    import zoo_study  # noqa: F401  (torchvision compat before timm)
    import timm

    info: dict[str, Any] = {"torch": torch.__version__, "timm": timm.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    bf16=torch.cuda.is_bf16_supported(), count=torch.cuda.device_count())
    else:
        info.update(name="cpu", threads=torch.get_num_threads())
    return info


def _cli(args: list[str], timeout: float, log: Path) -> int:
    """``zoo-study ARGS`` through the rehearsal module (its VOLO registered) in a subprocess, log to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, "-m", "tests.helpers.rehearsal", "zoo-study", *args], cwd=ROOT, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode


def _outcome(root: Path) -> dict[str, Any]:
    """Transfers finished and the distinct errors of failed jobs, from the results folder."""
    import pyarrow.parquet as pq

    done = len(list((root / "transfers").glob("*/summary.parquet")))
    errors: dict[str, int] = {}
    for p in (root / "failures").glob("*.parquet"):
        for r in pq.read_table(p).to_pylist():
            key = f"{r['stage']}: {r['error'][:160]}"
            errors[key] = errors.get(key, 0) + 1
    return {"transfers_ok": done, "jobs_failed": sum(errors.values()), "errors": errors}


def rehearsal(work: Path, dry: bool, timeout: float) -> dict[str, Any]:
    """The rehearsal study with the cache (every method, packs, multi-teacher, report), then predictions
    without the cache; both through the CLI."""
    from tests.helpers import rehearsal as R
    from zoo_study.methods import method_names

    archs = (R.BY_ID["deit"], R.BY_ID["pit"]) if dry else R.ARCHS  # dry: the two cheapest archs
    methods = ["kl", "crd", "amtml_kd"] if dry else list(method_names())
    tree, ckpt = R.make_tree(work / "imagenet"), R.write_checkpoints(work / "checkpoints", archs)
    multi = "" if dry else ('\n[multi_teacher]\nenabled = true\nstudents = ["deit"]\nteachers = ["resnet", "swin", '
                            '"mobilevit"]\nmodes = ["sequential", "parallel", "soup"]\nmethod = "kl_dp"\nepochs = 1\n'
                            'parallel_methods = ["amtml_kd"]\n')
    out: dict[str, Any] = {"archs": len(archs), "methods": len(methods)}
    for cached in (True, False):
        tag = "cached" if cached else "uncached"
        cfg = work / f"rehearsal_{tag}.toml"
        cfg.write_text(R.study_toml(f"rehearsal_{tag}", work / tag, tree, ckpt, archs=archs,
                                    cache_dir=work / "cache" if cached else None, methods=methods,
                                    extra=multi if cached else ""))
        stages = [] if cached else ["--stage", "zoo,predict,score"]
        t = time.time()
        code = _cli(["run", str(cfg), "--no-progress", *stages], timeout if cached else timeout / 2, work / f"rehearsal_{tag}.log")
        out[tag] = {"exit": code, "seconds": round(time.time() - t, 1), **_outcome(work / tag)}
    out["cached"]["vs_timm_fp32"] = _agreement(R, archs, ckpt, tree, work / "cached")
    if out["cached"]["exit"] not in (0, 1) or out["uncached"]["exit"] != 0:
        raise RuntimeError(f"rehearsal exit codes {out['cached']['exit']}, {out['uncached']['exit']} "
                           f"(logs in {work})")
    return out


def _agreement(R: Any, archs: tuple, ckpt: dict, tree: Path, root: Path) -> dict[str, str]:
    """Per model, the study's top-1 on the device against timm's own CPU fp32 eval of the same files
    ("equal / n", and the largest p_max difference): bf16 autocast may flip near-ties."""
    import numpy as np
    import pyarrow.parquet as pq

    files, out = R.eval_files(tree), {}
    for spec in archs:
        path = root / "predictions" / f"model={spec.model_id}.parquet"
        if not path.exists():
            out[spec.model_id] = "no predictions"
            continue
        rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["sample_id"])
        probs = R.timm_probs(spec, ckpt[spec.model_id], files)
        same = int(sum(r["pred"] == p for r, p in zip(rows, probs.argmax(1).tolist())))
        dp = float(np.abs(np.array([r["p_max"] for r in rows]) - probs.max(1)).max())
        out[spec.model_id] = f"{same}/{len(rows)} top-1 equal, max |dp| {dp:.1e}"
    return out


def bench(model: str, out: Path, dry: bool, timeout: float) -> dict[str, Any]:
    """``bench_gpu.py`` for one model at the study's batch; the row carries its rates and peak memory."""
    batch = 2 if dry else 256
    js = out / f"bench_{model}.json"
    args = [str(ROOT / "benchmarks" / "bench_gpu.py"), "--models", model, "--batch", str(batch),
            "--eval-batch", str(batch), "--out", str(js)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _BENCH_WRAPPER, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    peak = [json.loads(ln[len(PEAK_TAG):]) for ln in proc.stdout.splitlines() if ln.startswith(PEAK_TAG)]
    row: dict[str, Any] = {"batch": batch, "peak_gb": round(peak[-1]["peak_gb"], 2) if peak and peak[-1]["peak_gb"]
                           is not None else None}
    if js.exists():
        doc = json.loads(js.read_text())
        for r in doc.get("models", []):
            if r.get("model") == model:
                row.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "model"})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench_gpu.py exit {proc.returncode}: {tail[0][:300]} (peak {row['peak_gb']} GB)")
    return row


def _idle_share(prof: Any, wall_us: float) -> float | None:
    """1 - (union of CUDA kernel intervals) / wall time; None without device events."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA")
    if not spans:
        return None
    busy, cur_s, cur_e = 0.0, *spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            busy, cur_s, cur_e = busy + (cur_e - cur_s), s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    return round(max(0.0, 1.0 - busy / wall_us), 3)


def profile_pack(work: Path, dry: bool) -> dict[str, Any]:
    """One pair's pack of 6 transfers under torch.profiler, with and without the cache (in this process:
    the serial backend runs the pack here)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipelines.cli import main as cli_main
    from tests.helpers import rehearsal as R

    if dry:
        archs = (R.BY_ID["deit"], R.BY_ID["pit"])
        tree = R.make_tree(work / "imagenet")
    else:  # full-width random-init paper-like pair; more images so the steps are real
        archs = (R.TinyArch("student", "resnet50"), R.TinyArch("teacher", "vit_small_patch16_224", family="transformer"))
        tree = R.make_tree(work / "imagenet", n_train=170, n_val=20)
    ckpt = R.write_checkpoints(work / "checkpoints", archs)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    out: dict[str, Any] = {"pair": f"{archs[1].arch} -> {archs[0].arch}", "methods": len(PACK_METHODS)}
    for cached in (True, False):
        tag = "cached" if cached else "uncached"
        cfg = work / f"pack_{tag}.toml"
        cfg.write_text(R.study_toml(f"pack_{tag}", work / tag, tree, ckpt, archs=archs, methods=PACK_METHODS,
                                    pairs=[(archs[1].model_id, archs[0].model_id)],
                                    cache_dir=work / "cache" if cached else None)
                       .replace("batch_size = 4\n", "batch_size = 64\n" if not dry else "batch_size = 4\n"))
        if cli_main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict"]) != 0:
            raise RuntimeError(f"predict failed for the {tag} pack (see {work / tag})")
        t = time.time()
        with profile(activities=acts) as prof:
            code = cli_main(["run", str(cfg), "--no-progress", "--stage", "transfer"])
        wall = time.time() - t
        top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=5)
        (work / f"pack_{tag}_top_ops.txt").write_text(top)
        ops = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:3]
        out[tag] = {"exit": code, "wall_s": round(wall, 1), "gpu_idle_share": _idle_share(prof, wall * 1e6),
                    "top_cpu_ops": [f"{a.key} {a.self_cpu_time_total / 1e6:.1f}s" for a in ops],
                    **_outcome(work / tag)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.{md,json} and the step logs")
    ap.add_argument("--cpu-dry", action="store_true", help="tiny, on CPU: the same steps in seconds (CI)")
    ap.add_argument("--models", default=None, help="comma-separated timm archs for bench_gpu.py")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {str(args.out)!r} is a file; give a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    dry = args.cpu_dry
    if dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is a CPU run even on a GPU machine
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # CI's 2 cores: no thread oversubscription
    res = Result(args.out, "cpu-dry" if dry else "gpu")
    dev = res.step("device", device_info)
    res.device = {k: v for k, v in dev.items() if k not in ("step", "status", "seconds")}
    if not dry and not res.device.get("cuda"):
        print("no CUDA device: the GPU steps would run on CPU; use --cpu-dry", file=sys.stderr)
    work = args.out / "work"
    deadline = time.time() + BUDGET_S  # the profile step (~1-2 min on a GPU) runs after the subprocess steps

    def left(cap: float) -> float:
        return max(10.0, min(cap, deadline - time.time()))

    res.step("rehearsal", lambda: rehearsal(work / "rehearsal", dry, timeout=left(150)))
    models = args.models.split(",") if args.models else list(DRY_BENCH_MODELS if dry else BENCH_MODELS)
    for m in models:
        res.step(f"bench:{m}", lambda m=m: bench(m, args.out, dry, timeout=left(75)))
    res.step("profile", lambda: profile_pack(work / "profile", dry))
    res.save()
    failed = [r["step"] for r in res.rows if r["status"] != "ok"]
    print(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json; {len(failed)} step(s) failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
