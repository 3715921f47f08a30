"""Benchmark: transfers of one pair as separate jobs vs one packed job, and a transfer step vs a plain
training step, measured side by side in one process (CPU by default).

Setup (demo-sized): generated data, 100 classes at 32 px, 12,000 train / 3,000 eval; student
``resnet10t_w16``'s architecture, teacher ``vit_p8_d96``'s (embedded-zoo recipes, untrained weights: time
does not depend on them); the paper's 9 methods (CRD with 4,096 negatives, as the demo); the demo's
budget unless changed (3 epochs of a 10% transfer set, batch 128). Each transfer gets the student's and
teacher's cached eval predictions, as pipeline jobs do.

It prints:

1. the wall time of all methods as separate ``run_transfer`` calls and as one ``run_transfer_pack``
   (results are bit-identical, tests/test_transfer_pack.py), and the packed cost per transfer as a
   ratio of the separate one (target <= 0.6x), and the share of a transfer's work that packing shares
   (the teacher forward, batches, anchor forward), which bounds that ratio from below;
2. the time of one plain training step of the student (augment, preprocess, forward, backward, SGD) on
   the same batches, and the training time per step and transfer inside the pack (the pack's wall time
   minus its evaluation pass, per member and step), as a ratio (target <= 1.3x).

3. the student's evaluation pass with NCHW weights vs the default layout (channels_last for the pass on
   CPU, ``zoo_study/layout.py``), as a ratio.

Usage: ``python benchmarks/bench_pack.py [--epochs 3] [--fraction 0.1] [--methods kl,kl_dp,...]
[--eval-every N]``
"""

from __future__ import annotations

import argparse
import time

import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm

from zoo_study.data import GeneratedSpec, ModelPreprocess, TransferAugment, make_generated, raw_loader
from zoo_study.methods import method_names
from zoo_study.transfer import Runtime, TransferConfig, predict_split, run_transfer, transfer_set
from zoo_study.transfer.job import run_transfer_pack
from zoo_study.zoo.catalog import CatalogRecord
from zoo_study.zoo.recipes import EMBEDDED_RECIPES


# the study's single-teacher methods (pipelines/configs/claims.toml), as the benchmark names them
PAPER_METHODS = ("kl", "xe_kl", "xe_kl_ls", "kl_topk", "xe_kl_mcl", "kl_dp", "kl_dp_unsup", "cd", "crd")


def _model(recipe_id: str, num_classes: int, seed: int):
    r = next(r for r in EMBEDDED_RECIPES if r.model_id == recipe_id)
    torch.manual_seed(seed)
    m = timm.create_model(r.arch, num_classes=num_classes, **r.model_kwargs).eval()
    rec = CatalogRecord(model_id=recipe_id, source="embedded", arch=r.arch, family="cnn", params_m=0.0,
                        num_classes=num_classes, **r.data_config)
    return m, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--methods", default=",".join(PAPER_METHODS),
                    help=f"comma-separated (default: the paper's 9; registered: {', '.join(method_names())})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a pipeline job gets one core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-every", type=int, default=1,
                    help="evaluate every N epochs and after the last (default 1, the paper's every epoch)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    src = make_generated(GeneratedSpec(n_train=12000, n_eval=3000))
    student, srec = _model("resnet10t_w16", src.num_classes, 0)
    teacher, trec = _model("vit_p8_d96", src.num_classes, 1)
    rt = Runtime.create(args.device)
    s_pre = ModelPreprocess.from_data_config(srec.data_config)
    cached = {trec.model_id: predict_split(teacher, src.eval, ModelPreprocess.from_data_config(trec.data_config),
                                           batch_size=256, rt=rt)}
    passes = {}
    for name, r in (("nchw", rt.replace_eval(False)), ("default", rt)):  # the student's eval pass, both layouts
        predict_split(student, src.eval, s_pre, batch_size=256, rt=r)  # warm-up
        t0 = time.perf_counter()
        cached[srec.model_id] = predict_split(student, src.eval, s_pre, batch_size=256, rt=r)
        passes[name] = time.perf_counter() - t0
    eval_pass = passes["default"]
    hp = {"crd": {"nce_k": 4096}}
    configs = [TransferConfig(method=m, hparams=hp.get(m, {}), epochs=args.epochs, batch_size=128,
                              eval_every=args.eval_every, transfer_fraction=args.fraction, augment="flip")
               for m in methods]
    n_train = len(transfer_set(src, configs[0]))
    steps = (n_train // 128) * args.epochs
    print(f"device {args.device}, {args.threads} thread(s); {len(methods)} methods; {n_train} transfer images, "
          f"{steps} steps per transfer, eval split {len(src.eval)} images")

    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id=f"s{i}", cached_predictions=cached,
                     device=args.device)
    separate = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=[f"p{i}" for i in range(len(configs))],
                            cached_predictions=cached, device=args.device)
    packed = time.perf_counter() - t0
    bad = [c.method for c, r in zip(configs, out) if isinstance(r, BaseException)]
    if bad:
        print(f"failed in the pack: {bad}")
    print(f"separate jobs : {separate:7.1f} s  ({separate / len(configs):.2f} s per transfer)")
    print(f"one packed job: {packed:7.1f} s  ({packed / len(configs):.2f} s per transfer)")
    print(f"packed / separate per transfer: {packed / separate:.2f}x   (target <= 0.6x)")
    n = len(configs)
    if n > 1:  # what packing saved is the shared work counted n - 1 times: the bound on the ratio
        shared = max(separate - packed, 0.0) / (n - 1)
        print(f"work shared per transfer: {shared:.2f} s of {separate / n:.2f} s ({100 * shared / (separate / n):.0f}%):"
              f" no pack of any size can go below {1 - shared / (separate / n):.2f}x on this pair and device")

    # a plain training step of the student on the same batches (augment, preprocess, fwd, bwd, SGD)
    train = transfer_set(src, configs[0])
    pre = ModelPreprocess.from_data_config(srec.data_config)
    aug, gen = TransferAugment(color_p=0.0, gray_p=0.0), torch.Generator().manual_seed(0)
    model = timm.create_model(next(r for r in EMBEDDED_RECIPES if r.model_id == "resnet10t_w16").arch,
                              num_classes=src.num_classes,
                              **next(r for r in EMBEDDED_RECIPES if r.model_id == "resnet10t_w16").model_kwargs)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    n = 0
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for raw, labels, _ in raw_loader(train, 128, shuffle=True, seed=1, drop_last=True):
            loss = torch.nn.functional.cross_entropy(model(pre(aug(raw, gen))), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
    plain = (time.perf_counter() - t0) / n
    n_evals = -(-args.epochs // configs[0].eval_every)  # evaluations per member (every epoch by default)
    per_step = (packed - len(configs) * n_evals * eval_pass) / (len(configs) * steps)
    print(f"plain student step: {plain * 1e3:.1f} ms; transfer step in the pack (per member, eval removed): "
          f"{per_step * 1e3:.1f} ms -> {per_step / plain:.2f}x   (target <= 1.3x)")
    print(f"eval pass of the student over {len(src.eval)} images: {eval_pass:.2f} s; with NCHW weights "
          f"{passes['nchw']:.2f} s -> {passes['nchw'] / max(eval_pass, 1e-9):.2f}x faster in the default layout")
    # per method: its own step inside the pack (forward, objective, backward, update; the shared teacher and
    # anchor forwards and the batch are not in it) against the plain step
    print("per method, own step in the pack / plain step (target <= 1.3x):")
    for cfg, res in zip(configs, out):
        if isinstance(res, BaseException):
            continue
        own = sum(p.get("step_seconds", 0.0) for p in res.info["phases"]) / steps
        print(f"  {cfg.method:<12} {own * 1e3:7.1f} ms  {own / plain:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
