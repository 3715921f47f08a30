"""Benchmark: one transfer epoch of ImageFolder reads: on the fly (in-thread, in workers) vs the decoded-image cache.

Generates a JPEG tree of photo-like images (default 2,000 train JPEGs of 500x375 / 375x500: smooth
random fields with texture, shapes, edges and noise, ~80 KB each at quality 92 (ImageNet's JPEGs
average ~110 KB at a slightly larger size), in a temporary directory, in parallel), then measures images/s of one shuffled epoch (batch 128), in the same process:

- ``raw squares, workers=0``: the older lazy path (raw squares of ``--raw-size``, decoded in the calling
  thread; not timm's pixels), the reference of the "vs ref" column;
- ``on the fly, workers=0 / W``: the default without a cache: ``cached_split`` without a cache gives a
  loader that decodes every model's timm eval geometry (timm's pixels exactly), in the calling thread or
  in W DataLoader worker processes (the default, ``data.loader_workers``);
- ``cache, epoch 1``: ``cached_split`` (parallel build of the per-model geometries of a student and a
  teacher, decoding each JPEG once) plus one epoch of memory-mapped batch slicing;
- ``cache, epoch k``: later epochs (the cache already built: what every later epoch and job costs).

What an epoch includes: producing every model's uint8 batch on the host (the lazy path: one raw square
batch that each model resamples on the device; the cache: one batch per geometry). With
``--model-inputs`` it also includes each model's normalised float input on the CPU (ModelPreprocess /
model_input), which in the transfer loop runs on the GPU. Model forward passes are not included: this
measures the input pipeline the issue is about. Target: later cache epochs >= 10x the older path.
It also times the file index: the first source walks the tree and writes the index, the next reads it.

Usage::

    python benchmarks/bench_imagefolder.py                 # 2,000 JPEGs, 3 cache epochs
    python benchmarks/bench_imagefolder.py --n 400         # quick check
    python benchmarks/bench_imagefolder.py --model-inputs  # include per-model normalisation on the CPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo_study  # noqa: E402,F401  (torchvision compat shim before timm)
from zoo_study.data import ImageFolderSpec, ModelPreprocess, make_imagefolder, raw_loader  # noqa: E402
from zoo_study.data.cache import cached_split, model_input  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STUDENT = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": MEAN, "std": STD}
TEACHER = {"input_size": (3, 224, 224), "crop_pct": 0.95, "interpolation": "bicubic", "mean": MEAN, "std": STD}


# --------------------------------------------------------------------------------------- JPEG tree
def photo_like(seed: int, w: int, h: int):
    """A smooth random field (a few octaves), shapes with hard edges, blur and sensor-like noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3), dtype=np.float32)
    for cells, weight in ((4, 0.45), (16, 0.25), (64, 0.15), (200, 0.15)):
        low = rng.integers(0, 256, (max(2, h * cells // w), cells, 3), dtype=np.uint8)
        acc += weight * np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    im = Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.7))))
    noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 8, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write(job: tuple[str, int, int, int]) -> int:
    path, seed, w, h = job
    photo_like(seed, w, h).save(path, quality=92)
    return os.path.getsize(path)


def make_tree(root: Path, n_train: int, n_val: int, classes: int, size: tuple[int, int], procs: int) -> tuple[float, float]:
    jobs = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = i % classes
            d = root / split / f"class{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = size if i % 3 else size[::-1]  # two thirds landscape, one third portrait
            jobs.append((str(d / f"{split}_{i:06d}.jpg"), (0 if split == "train" else 10**7) + i, w, h))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as ex:
        sizes = list(ex.map(_write, jobs, chunksize=32))
    return time.perf_counter() - t0, float(np.mean(sizes))


# -------------------------------------------------------------------------------------- measurement
def epoch(loader, pres: list[ModelPreprocess] | None) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for raw, labels, _ in loader:
        if pres:
            for p in pres:
                model_input(raw, p)
        n += len(labels)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="train JPEGs (the transfer set); >= 2000 by default")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", default="500x375", help="image size WxH (portraits are its transpose)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--raw-size", type=int, default=256, help="the lazy path's raw square size")
    ap.add_argument("--epochs", type=int, default=3, help="cache epochs (the first includes the build)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers / cache build processes; 0: all CPUs")
    ap.add_argument("--model-inputs", action="store_true", help="also normalise each model's input on the CPU")
    ap.add_argument("--dir", default=None, help="where to write the tree and the cache (default: a temp dir, "
                    "removed at the end; a tree already there with --n images is reused)")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree and cache")
    args = ap.parse_args()

    cpus = len(os.sched_getaffinity(0))
    workers = args.workers or cpus
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", cpus))))
    size = tuple(int(v) for v in args.size.lower().split("x"))
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_imagefolder_"))
    root, cache_dir = base / "tree", base / "cache"
    try:
        if cache_dir.exists():
            shutil.rmtree(cache_dir)  # every run measures a fresh build
        if (root / "train").is_dir() and sum(1 for _ in (root / "train").rglob("*.jpg")) == args.n:
            gen_s, mean_bytes = 0.0, float(np.mean([f.stat().st_size for f in (root / "train").rglob("*.jpg")]))
        else:
            shutil.rmtree(root, ignore_errors=True)
            gen_s, mean_bytes = make_tree(root, args.n, max(args.classes, 20), args.classes, size, workers)
        print(f"generated {args.n} train JPEGs of {size[0]}x{size[1]} (mean {mean_bytes / 1e3:.0f} KB) in {gen_s:.1f} s "
              f"with {workers} processes; {cpus} CPUs, torch threads {torch.get_num_threads()}")
        pres = [ModelPreprocess.from_data_config(c) for c in (STUDENT, TEACHER)] if args.model_inputs else None
        what = "loader + model inputs (CPU)" if pres else "loader (uint8 batches for every model)"
        print(f"one shuffled epoch, batch {args.batch}, student 224/0.875 + teacher 224/0.95 bicubic; measures: {what}")

        rows: list[tuple[str, int, float]] = []
        lazy = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size, cache_geometry="raw",
                                                loader_workers=0))
        n, s = epoch(raw_loader(lazy.train, args.batch, shuffle=True, seed=0), pres)
        rows.append(("raw squares (older, not timm's pixels), workers=0", n, s))
        fly = cached_split(make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size)).train,
                           [STUDENT, TEACHER])
        for w in (0, workers):
            n, s = epoch(raw_loader(fly, args.batch, shuffle=True, seed=0, num_workers=w), pres)
            rows.append((f"on the fly (timm's pixels), DataLoader workers={w}", n, s))

        t0 = time.perf_counter()
        make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size, cache_dir=str(cache_dir)))
        walk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size, cache_dir=str(cache_dir)))
        print(f"file index: walk + write {walk_s:.3f} s, read {time.perf_counter() - t0:.3f} s "
              f"({args.n + max(args.classes, 20)} files)")
        src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size, cache_dir=str(cache_dir),
                                               cache_workers=workers))
        t0 = time.perf_counter()
        cached = cached_split(src.train, [STUDENT, TEACHER])
        build_s = time.perf_counter() - t0
        loader = raw_loader(cached, args.batch, shuffle=True, seed=0)
        n, s = epoch(loader, pres)
        rows.append((f"cache epoch 1 (incl. build {build_s:.1f} s, {workers} procs)", n, s + build_s))
        for e in range(2, args.epochs + 1):
            n, s = epoch(loader, pres)
            rows.append((f"cache epoch {e}", n, s))
        # a second job in a fresh source: opens the maps, no decoding
        t0 = time.perf_counter()
        again = cached_split(make_imagefolder(ImageFolderSpec(root=str(root), raw_size=args.raw_size,
                                                              cache_dir=str(cache_dir))).train, [STUDENT, TEACHER])
        open_s = time.perf_counter() - t0
        n, s = epoch(raw_loader(again, args.batch, shuffle=True, seed=1), pres)
        rows.append((f"cache, next job (open {open_s:.2f} s + epoch)", n, s + open_s))

        ref = rows[0][1] / rows[0][2]
        print(f"\n{'path':58s} {'images':>7s} {'seconds':>8s} {'images/s':>9s} {'vs ref':>9s}")
        for name, n, s in rows:
            print(f"{name:58s} {n:7d} {s:8.2f} {n / s:9.0f} {n / s / ref:8.1f}x")
        disk = sum(f.stat().st_size for f in cache_dir.rglob("images.npy")) / 1e9
        print(f"\ncache on disk: {disk:.2f} GB for {n} images x 2 geometries (uint8 [N, 3, 224, 224] each)")
        later = [n / s for name, n, s in rows if name.startswith("cache epoch") and not name.startswith("cache epoch 1")]
        if later:
            best = min(later) / ref
            print(f"later cache epochs vs the older path: {best:.1f}x (target >= 10x) -> {'OK' if best >= 10 else 'BELOW TARGET'}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
