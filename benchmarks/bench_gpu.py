"""Per-model throughput on an accelerator, and the figures the planner uses to estimate a study's GPU-hours.

    python benchmarks/bench_gpu.py [--device cuda] [--models resnet50.a1_in1k,vit_base_patch16_224,...]
                                   [--embedded [IDS]] [--config STUDY.toml] [--batch N] [--out bench_gpu.json]

On the given device (default: cuda when available, else cpu, said in the output) it measures, for each
model at its own timm input size (random weights: throughput does not depend on them):

- ``eval_img_s``: inference images/s (eval mode, no grad; bf16 autocast and channels_last on CUDA, as the
  transfer loop uses them), batch ``--eval-batch``;
- ``train_img_s``: training images/s of a student step (forward, cross-entropy, backward, SGD), batch
  ``--batch``: by default the study's transfer batch size (``--config``'s ``transfer.batch_size``, else
  the transfer default, 256), since activation memory and speed depend on it;
- ``eval_peak_bytes`` / ``train_peak_bytes``: ``torch.cuda.max_memory_allocated`` of each measurement
  (None on CPU);
- and, once, ``decode_img_s``: PIL decode + resize of a generated 500x375 JPEG on one CPU core (the
  cost the decoded-image cache removes). Packed vs separate transfers of one pair on the device:
  ``benchmarks/bench_pack.py --device cuda``.

A model that runs out of memory gets a row ``{"model", "oom": true, "oom_in": "eval" | "train", "batch",
"eval_batch"}`` (the cache is cleared and the next model runs). The JSON (``--out``) is rewritten
atomically after every model, so a run cut short keeps what it measured. ``zoo-study run CONFIG --dry-run
--bench bench_gpu.json`` reads it (pipelines/estimate.py): rows are matched by model id and by timm name
with or without the pretrained tag; an OOM row counts as a missing model.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
from timm.data import resolve_data_config

import zoo_study.zoo.archs  # noqa: F401  (registers the embedded zoo's own architectures: zoo_mixer_p4, ...)

OOM = torch.OutOfMemoryError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], None], n_images: int, device: torch.device, warmup: int, repeats: int) -> float:
    """Images/s of ``fn`` (one batch of ``n_images``) over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return n_images * repeats / (time.perf_counter() - t0)


def _peak(device: torch.device) -> int | None:
    """Peak allocated bytes since the last reset on CUDA; None on CPU (no allocator statistics)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _measure_eval(model, x, device, amp, warmup: int, repeats: int) -> float:
    model.eval()

    @torch.inference_mode()
    def infer():
        with amp:
            model(x)

    return _rate(infer, len(x), device, warmup, repeats)


def _measure_train(model, x, y, device, amp, warmup: int, repeats: int) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _rate(step, len(x), device, warmup, repeats)


def bench_model(name: str, device: torch.device, batch: int, eval_batch: int, num_classes: int = 1000,
                kwargs: dict | None = None, input_size: list[int] | None = None, warmup: int = 2,
                repeats: int = 5) -> dict[str, Any]:
    """One model's row: eval and train rates and peaks; ``{"oom": True, ...}`` when it does not fit."""
    row: dict[str, Any] = {"model": name, "batch": batch, "eval_batch": eval_batch}
    stage = "build"
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or {})).to(device)
        size = input_size or list(resolve_data_config({}, model=model)["input_size"])
        row.update(input_size=size, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3))
        cuda = device.type == "cuda"
        fmt = torch.channels_last if cuda else torch.contiguous_format
        model = model.to(memory_format=fmt)
        amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        stage = "eval"
        _reset_peak(device)
        x = torch.randn(eval_batch, *size, device=device).contiguous(memory_format=fmt)
        row["eval_img_s"] = _measure_eval(model, x, device, amp, warmup, repeats)
        row["eval_peak_bytes"] = _peak(device)
        del x
        stage = "train"
        _reset_peak(device)
        x = torch.randn(batch, *size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, num_classes, (batch,), device=device)
        row["train_img_s"] = _measure_train(model, x, y, device, amp, warmup, repeats)
        row["train_peak_bytes"] = _peak(device)
    except OOM:
        row = {**row, "oom": True, "oom_in": stage, "train_img_s": None}
        row.setdefault("eval_img_s", None)
    finally:
        model = x = y = None  # noqa: F841  (free before the next model)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def bench_decode(n: int = 200) -> float:
    """Images/s of PIL decode + bicubic short-side resize + centre crop (one CPU core)."""
    from PIL import Image

    from zoo_study.data.imagefolder import load_raw_image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (375 // 8 + 1, 500 // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((500, 375), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    with tempfile.NamedTemporaryFile(suffix=".jpg") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        t0 = time.perf_counter()
        for _ in range(n):
            load_raw_image(fh.name, 288)
        return n / (time.perf_counter() - t0)


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` atomically (temp file in the same folder, then rename): never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def study_batches(config: str | None) -> tuple[int, int, int]:
    """(train batch, eval batch, classes of the embedded zoo's data) of the study, or the transfer defaults."""
    from zoo_study.transfer.config import TransferSettings

    if config is None:
        d = TransferSettings()
        return d.batch_size, d.eval_batch_size, 100
    from zoo_study.config import load_config

    cfg = load_config(config)
    classes = cfg.data.generated.num_classes if cfg.data.kind == "generated" else 1000
    return cfg.transfer.batch_size, cfg.transfer.eval_batch_size, classes


def _jobs(args, num_classes: int) -> list[tuple[str, dict]]:
    """(name, bench_model keyword arguments) of every model to measure."""
    jobs = [(m, {}) for m in args.models.split(",") if m]
    if args.embedded:
        from zoo_study.zoo.recipes import EMBEDDED_RECIPES, recipe_by_id

        recipes = EMBEDDED_RECIPES if args.embedded == "all" else [recipe_by_id(r) for r in args.embedded.split(",")]
        for rec in recipes:
            jobs.append((rec.model_id, {"arch": rec.arch, "num_classes": num_classes, "kwargs": dict(rec.model_kwargs),
                                        "input_size": list(rec.data_config["input_size"])}))
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", default="resnet50,vit_base_patch16_224,convnext_small",
                    help="comma-separated timm names ('' for none)")
    ap.add_argument("--embedded", nargs="?", const="all", default=None, metavar="IDS",
                    help="also the embedded-zoo recipes (all, or comma-separated ids), at their own sizes")
    ap.add_argument("--config", default=None, help="a study TOML: its transfer.batch_size / eval_batch_size")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the study's, 256)")
    ap.add_argument("--eval-batch", type=int, default=None, help="eval batch (default: the study's, 256)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-images", type=int, default=200, help="JPEGs decoded for decode_img_s (0: skip)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    batch, eval_batch, classes = study_batches(args.config)
    batch, eval_batch = args.batch or batch, args.eval_batch or eval_batch
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}); torch {torch.__version__}, timm {timm.__version__}; batch {batch}, "
          f"eval batch {eval_batch}")
    out = {"device": str(device), "device_name": name, "batch": batch, "eval_batch": eval_batch, "models": []}
    if args.decode_images > 0:
        out["decode_img_s"] = bench_decode(args.decode_images)
        print(f"decode (PIL, one core, 500x375 JPEG -> 288): {out['decode_img_s']:.0f} img/s")
    for label, kw in _jobs(args, classes):
        arch = kw.pop("arch", label)
        r = bench_model(arch, device, batch, eval_batch, warmup=args.warmup, repeats=args.repeats, **kw)
        r["model"] = label
        out["models"].append(r)
        if r.get("oom"):
            print(f"{label:<36} out of memory in {r['oom_in']} (batch {batch}, eval batch {eval_batch})")
        else:
            peak = r["train_peak_bytes"]
            print(f"{label:<36} {r['params_m']:>8.1f} M  eval {r['eval_img_s']:>9.0f} img/s  train "
                  f"{r['train_img_s']:>8.0f} img/s" + (f"  peak {peak / 2**30:.1f} GiB" if peak is not None else ""))
        if args.out:
            write_json(args.out, out)  # after every model: a run cut short keeps what it measured
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
