"""Per-model throughput on an accelerator, and the figures the planner uses to estimate a study's GPU-hours.

    python benchmarks/bench_gpu.py [--device cuda] [--models resnet50.a1_in1k,vit_base_patch16_224,...]
                                   [--embedded] [--out bench_gpu.json] [--images 2000]

On the given device (default: cuda when available, else cpu, said in the output) it measures, for each
model at its own timm input size (random weights: throughput does not depend on them):

- ``eval_img_s``: inference images/s (eval mode, no grad; bf16 autocast and channels_last on CUDA, as the
  transfer loop uses them), batch ``--eval-batch``;
- ``train_img_s``: training images/s of a student step (forward, cross-entropy, backward, SGD), batch
  ``--batch``;
- and, once, ``decode_img_s``: PIL decode + resize of a generated 500x375 JPEG on one CPU core (the
  cost the decoded-image cache removes). Packed vs separate transfers of one pair on the device:
  ``benchmarks/bench_pack.py --device cuda``.

The JSON it writes (``--out``) is read by ``zoo-study run CONFIG --dry-run --bench bench_gpu.json`` to
print the study's estimated accelerator-hours: per transfer, (student train + teacher and anchor
forwards) x transfer images x epochs + evaluations x eval images / the student's eval rate.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import numpy as np
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
from timm.data import resolve_data_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, n_images: int, device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return n_images * repeats / (time.perf_counter() - t0)


def bench_model(name: str, device: torch.device, batch: int, eval_batch: int, num_classes: int = 1000,
                kwargs: dict | None = None, input_size: list[int] | None = None) -> dict:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or {})).to(device)
    cfg = resolve_data_config({}, model=model)
    size = input_size or list(cfg["input_size"])
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    x_eval = torch.randn(eval_batch, *size, device=device)
    x_train = torch.randn(batch, *size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if cuda:
        x_eval = x_eval.contiguous(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    model.eval()

    @torch.inference_mode()
    def infer():
        with amp:
            model(x_eval)

    eval_rate = _rate(infer, eval_batch, device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x_train).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_rate = _rate(step, batch, device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if cuda:
        torch.cuda.empty_cache()
    return {"model": name, "input_size": size, "params_m": round(params, 3), "eval_img_s": eval_rate,
            "train_img_s": train_rate, "batch": batch, "eval_batch": eval_batch}


def bench_decode(n: int = 200) -> float:
    """Images/s of PIL decode + bicubic short-side resize + centre crop (one CPU core)."""
    from PIL import Image

    from zoo_study.data.imagefolder import load_raw_image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (375 // 8 + 1, 500 // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((500, 375), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jpg") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        t0 = time.perf_counter()
        for _ in range(n):
            load_raw_image(fh.name, 288)
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", default="resnet50,vit_base_patch16_224,convnext_small")
    ap.add_argument("--embedded", action="store_true", help="also every embedded-zoo recipe (their own sizes)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}); torch {torch.__version__}, timm {timm.__version__}")
    rows = []
    for m in [m for m in args.models.split(",") if m]:
        r = bench_model(m, device, args.batch, args.eval_batch)
        rows.append(r)
        print(f"{m:<36} {r['params_m']:>8.1f} M  eval {r['eval_img_s']:>9.0f} img/s  train {r['train_img_s']:>8.0f} img/s")
    if args.embedded:
        from zoo_study.zoo.recipes import EMBEDDED_RECIPES

        for rec in EMBEDDED_RECIPES:
            r = bench_model(rec.arch, device, args.batch, args.eval_batch, num_classes=100,
                            kwargs=dict(rec.model_kwargs), input_size=list(rec.data_config["input_size"]))
            r["model"] = rec.model_id
            rows.append(r)
            print(f"{rec.model_id:<36} {r['params_m']:>8.1f} M  eval {r['eval_img_s']:>9.0f} img/s  "
                  f"train {r['train_img_s']:>8.0f} img/s")
    decode = bench_decode()
    print(f"decode (PIL, one core, 500x375 JPEG -> 288): {decode:.0f} img/s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": str(device), "device_name": name, "decode_img_s": decode, "models": rows}, fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
