"""Benchmark: wall time of transfer jobs on the CPU, per method and mode, measured side by side.

1. Tiny (default): timm resnet10t with channels (8, 16, 32, 64) on a generated 6-class set at 16 px
   (300 train / 120 eval, transfer fraction 0.4, 2 epochs, batch 30), the size the tests use. One line
   per method (median of ``--repeats`` runs) and per multi-teacher mode with two teachers, with the
   ratio to KL+DP.
2. ``--demo``: demo-sized data (generated 100 classes, 16,000 train / 4,000 eval at 32 px, transfer
   fraction 0.1) with two embedded-zoo architectures (untrained weights: the time does not depend on
   them): student resnet10t_w16, teacher vit_p8_d96. It prints the job time with and without cached
   eval predictions (the pipeline's predict stage) and the share of the job spent in eval passes,
   which dominate at this size (E + 2 passes of 4,000 images against E passes of 1,600 training
   images).

Usage::

    python benchmarks/bench_transfer.py                   # tiny, all methods and modes
    python benchmarks/bench_transfer.py --demo --epochs 2 # plus the demo-sized job
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm

from zoo_study.data import GeneratedSpec, ModelPreprocess, make_generated
from zoo_study.transfer import Runtime, TransferConfig, method_names, predict_split, run_transfer
from zoo_study.zoo.catalog import CatalogRecord


def _record(model_id: str, arch: str, num_classes: int, data_config: dict) -> CatalogRecord:
    return CatalogRecord(model_id=model_id, source="embedded", arch=arch, family="cnn", params_m=0.0,
                         num_classes=num_classes, **data_config)


def _tiny(seed: int):
    torch.manual_seed(seed)
    m = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    cfg = {"input_size": [3, 16, 16], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    return m, _record(f"tiny{seed}", "resnet10t", 6, cfg)


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_tiny(repeats: int) -> None:
    src = make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=3, n_train=300, n_eval=120,
                                       image_size=16))
    (s, sr), (t1, r1), (t2, r2) = _tiny(0), _tiny(1), _tiny(2)
    base = dict(epochs=2, batch_size=30, transfer_fraction=0.4)
    rows = []
    for method in method_names():
        hp = {"nce_k": 4096} if method == "crd" else {}
        cfg = TransferConfig(method=method, hparams=hp, **base)
        rows.append((f"single {method}", _time(lambda: run_transfer(s, sr, [(t1, r1)], src, cfg, job_id="b"), repeats)))
    for mode in ("sequential", "parallel", "soup"):
        cfg = TransferConfig(method="kl_dp", mode=mode, **base)
        rows.append((f"{mode} kl_dp, 2 teachers",
                     _time(lambda: run_transfer(s, sr, [(t1, r1), (t2, r2)], src, cfg, job_id="b"), repeats)))
    ref = dict(rows)["single kl_dp"]
    print(f"tiny transfer jobs (120 train x 2 epochs, 120 eval), median of {repeats}, {torch.get_num_threads()} thread(s)")
    for name, sec in rows:
        print(f"  {name:32s} {sec * 1000:8.1f} ms   x{sec / ref:5.2f} vs single kl_dp")


def bench_demo(epochs: int) -> None:
    from zoo_study.zoo.recipes import recipe_by_id

    t0 = time.perf_counter()
    src = make_generated(GeneratedSpec())
    print(f"demo data generated in {time.perf_counter() - t0:.1f} s "
          f"({len(src.train)} train / {len(src.eval)} eval, {src.num_classes} classes)")
    models = []
    for rid in ("resnet10t_w16", "vit_p8_d96"):
        r = recipe_by_id(rid)
        torch.manual_seed(0)
        m = timm.create_model(r.arch, **r.model_kwargs_for(src.num_classes)).eval()
        models.append((m, _record(rid, r.arch, src.num_classes, r.data_config)))
    (s, sr), (t, tr) = models
    cfg = TransferConfig(method="kl_dp", epochs=epochs, batch_size=128, transfer_fraction=0.1)
    rt = Runtime.create("cpu")
    t0 = time.perf_counter()
    cached = {rec.model_id: predict_split(m, src.eval, ModelPreprocess.from_data_config(rec.data_config),
                                          batch_size=256, rt=rt) for m, rec in models}
    t_pred = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run_transfer(s, sr, [(t, tr)], src, cfg, job_id="demo")
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_transfer(s, sr, [(t, tr)], src, cfg, job_id="demo", cached_predictions=cached)
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict_split(s, src.eval, ModelPreprocess.from_data_config(sr.data_config), batch_size=256, rt=rt)
    t_eval = time.perf_counter() - t0
    print(f"demo kl_dp job, {res.row['n_train']} train x {epochs} epochs, {res.row['n_eval']} eval:")
    print(f"  uncached: {t_plain:6.2f} s   with cached eval predictions: {t_cached:6.2f} s   "
          f"ratio x{t_plain / t_cached:.2f}")
    print(f"  both models' eval passes (predict stage): {t_pred:.2f} s; one student eval pass {t_eval:.2f} s = "
          f"{100 * epochs * t_eval / t_cached:.0f}% of the cached job (its {epochs} per-epoch evaluations)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--demo", action="store_true", help="also time a demo-sized job")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the demo-sized job")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench_tiny(args.repeats)
    if args.demo:
        bench_demo(args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
