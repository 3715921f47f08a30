"""Benchmark: scoring every ordered pair of a model zoo from cached predictions.

Two measurements, printed side by side:

1. Scale (default): all ordered pairs of N models x n samples x C classes of synthetic predictions
   (default 300 x 50,000 x 1,000, i.e. ImageNet-val sized; 89,700 pairs). Target: under 10 s on the
   2-core development machine. Results are streamed chunk by chunk (``iter_pair_scores``), as a
   pipeline writing Parquet would, so memory stays bounded; ``--materialize`` instead builds the two
   full tables with ``score_pairs`` (pair_classes then has ~N^2 * C rows: several GB at full scale).
2. ``--naive``: why scores come from cached predictions. A few tiny timm ResNets over a few thousand
   random 32x32 images; "cached" = one prediction pass per model + vectorised scoring of all pairs,
   "naive" = for every pair, run teacher and student again and score that pair alone. The ratio is
   about 2 * (M - 1) (passes per model) because inference dominates both, and it grows with the zoo.

Usage::

    python benchmarks/bench_scoring.py                     # scale run, default sizes
    python benchmarks/bench_scoring.py --models 50 --samples 10000 --classes 100
    python benchmarks/bench_scoring.py --naive             # plus the naive comparison
    python benchmarks/bench_scoring.py --naive --skip-scale --naive-models 6 --naive-images 4000
    # a whole zoo with score.pair_classes = transfer_pairs (issue 25: < 2 min, <= 5 GB on disk)
    python benchmarks/bench_scoring.py --models 1500 --lean --pair-classes transfer_pairs --target-s 120
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import pyarrow as pa

import zoo_study  # noqa: F401  (installs the torchvision compat shim before timm is imported)
from zoo_study.scoring import PairSelection, align_predictions, iter_pair_scores, score_pairs
from zoo_study.store import PREDICTION_SCHEMA


# ------------------------------------------------------------------------------------ synthetic zoo
def synthetic_predictions(
    n_models: int, n_samples: int, n_classes: int, seed: int = 0, shuffle_fraction: float = 0.1,
    lean: bool = False,
) -> dict[str, pa.Table]:
    """Prediction tables with realistic structure, built with a Gaussian copula.

    Model m gets sample i right when z[m, i] < Phi^-1(acc_m), where
    z = sqrt(0.5) * difficulty_i + sqrt(0.2) * class_skill[m, y_i] + sqrt(0.3) * noise[m, i]
    is standard normal. Accuracies are uniform in [50%, 90%]; the shared sample difficulty makes errors
    correlated across models (hard images are hard for everybody) and the per-model class skill gives
    each model its own areas of expertise (non-uniform per-class flips). A wrong prediction is a
    random other class. Tables list the samples in one loader order, as a prediction stage writes
    them, except a ``shuffle_fraction`` of them whose rows are shuffled, so that alignment by sample id
    is exercised (1.0 = every table shuffled, the worst case). ``lean``: only the columns scoring reads
    (sample_id, label, pred), the loader-order tables sharing one sample_id and label array, so a whole
    zoo (1,500 x 50,000) fits in a few hundred MB instead of ~4 GB; the scores are the same.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), -(-n_samples // n_classes))[:n_samples]
    rng.shuffle(labels)
    labels = labels.astype(np.int32)
    difficulty = rng.standard_normal(n_samples).astype(np.float32)
    accs = rng.uniform(0.5, 0.9, n_models)
    nd = statistics.NormalDist()
    tables: dict[str, pa.Table] = {}
    sample_ids = np.arange(n_samples, dtype=np.int64) + 1_000_000
    loader_order = rng.permutation(n_samples)
    lean_shared: list[pa.Array] = []
    for m in range(n_models):
        skill = rng.standard_normal(n_classes).astype(np.float32)
        z = (
            np.sqrt(0.5, dtype=np.float32) * difficulty
            + np.sqrt(0.2, dtype=np.float32) * skill[labels]
            + np.sqrt(0.3, dtype=np.float32) * rng.standard_normal(n_samples, dtype=np.float32)
        )
        correct = z < nd.inv_cdf(accs[m])
        wrong = (labels + rng.integers(1, n_classes, n_samples)) % n_classes
        pred = np.where(correct, labels, wrong).astype(np.int32)
        order = rng.permutation(n_samples) if m < round(shuffle_fraction * n_models) else loader_order
        model_id = f"synthetic_{m:04d}.zoo" if n_models > 1000 else f"synthetic_{m:03d}.zoo"
        if lean:
            shared = order is loader_order
            if shared and not lean_shared:
                lean_shared[:] = [pa.array(sample_ids[loader_order]), pa.array(labels[loader_order])]
            sid, lab = lean_shared if shared else (pa.array(sample_ids[order]), pa.array(labels[order]))
            tables[model_id] = pa.table({"sample_id": sid, "label": lab, "pred": pa.array(pred[order])})
            continue
        tables[model_id] = pa.Table.from_arrays(
            [
                pa.array([model_id] * n_samples, pa.string()),
                pa.array(sample_ids[order]),
                pa.array(labels[order]),
                pa.array(pred[order]),
                pa.array(np.where(correct, 0.8, 0.1)[order].astype(np.float32)),
                pa.array(np.full(n_samples, 0.8, dtype=np.float32)),
                pa.nulls(n_samples, pa.list_(pa.int32())),
            ],
            schema=PREDICTION_SCHEMA,
        )
    return tables


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- scale run
def _stream(aligned, args: argparse.Namespace, with_classes: bool) -> tuple[float, int, int, np.ndarray]:
    """Score all pairs chunk by chunk, dropping each chunk after counting it (as a Parquet writer would)."""
    n_pairs = n_class_rows = 0
    rhos = []
    t0 = time.perf_counter()
    for pairs, pair_classes in iter_pair_scores(aligned, chunk_elements=args.chunk_elements, with_classes=with_classes):
        n_pairs += pairs.num_rows
        n_class_rows += pair_classes.num_rows
        rhos.append(pairs.column("rho_pos").to_numpy())
    return time.perf_counter() - t0, n_pairs, n_class_rows, np.concatenate(rhos)


def run_scale(args: argparse.Namespace) -> None:
    print(f"== scale: all ordered pairs of {args.models} models x {args.samples} samples x {args.classes} classes")
    print(f"machine: {os.cpu_count()} CPUs, load average before the run {os.getloadavg()[0]:.2f} "
          f"(other users' work slows every timing below)")
    t0 = time.perf_counter()
    preds = synthetic_predictions(args.models, args.samples, args.classes, seed=args.seed,
                                  shuffle_fraction=args.shuffle_fraction, lean=args.lean)
    print(f"synthetic predictions built in {time.perf_counter() - t0:.1f} s (not timed); "
          f"{args.shuffle_fraction:.0%} of the tables have their rows shuffled")

    t0 = time.perf_counter()
    aligned = align_predictions(preds)
    t_align = time.perf_counter() - t0
    del preds
    accs = aligned.correct.mean(axis=1)
    if args.pair_classes != "all":
        run_kept_classes(aligned, args, t_align)
        return

    t_pairs, n_pairs, _, rho = _stream(aligned, args, with_classes=False)
    if args.materialize:
        t0 = time.perf_counter()
        pairs, pair_classes = score_pairs(aligned, chunk_elements=args.chunk_elements)
        t_full = time.perf_counter() - t0
        n_class_rows = pair_classes.num_rows
        how = f"materialised: {pair_classes.nbytes / 2**30:.1f} GiB in memory"
    else:
        t_full, _, n_class_rows, _ = _stream(aligned, args, with_classes=True)
        how = "streamed chunk by chunk"
    total = t_align + t_full
    k = min(466, n_pairs)  # the paper's setting: 466 random pairs of the zoo, both tables in memory
    t0 = time.perf_counter()
    sparse, sparse_classes = score_pairs(aligned, PairSelection(pairs="random", k=k, seed=args.seed))
    t_sparse = time.perf_counter() - t0
    print(f"model accuracies {accs.min():.1%} .. {accs.max():.1%}; rho_pos over pairs: "
          f"median {np.median(rho):.2%}, min {rho.min():.2%}, max {rho.max():.2%}")
    print(f"pairs: {n_pairs}; pair_classes rows: {n_class_rows} ({how})")
    print(f"align predictions                      : {t_align:6.2f} s")
    print(f"score all pairs, pairs table only      : {t_pairs:6.2f} s  ({t_pairs / n_pairs * 1e6:.1f} us per pair)")
    print(f"score all pairs, pairs + pair_classes  : {t_full:6.2f} s  ({t_full / n_pairs * 1e6:.1f} us per pair)")
    print(f"total (align + pairs + pair_classes)   : {total:6.2f} s  -> {'UNDER' if total < args.target_s else 'OVER'} "
          f"the {args.target_s:g} s target")
    print(f"{k} random pairs (paper setting), both tables in memory: {t_sparse:.2f} s "
          f"({sparse_classes.num_rows} pair_classes rows)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB; load average after: {os.getloadavg()[0]:.2f}")


def run_kept_classes(aligned, args: argparse.Namespace, t_align: float) -> None:
    """The score stage with ``score.pair_classes`` = transfer_pairs | none, as pipelines/executors.py runs
    it: every pair's row (no per-class counts), streamed to a Parquet file as it is scored, then
    per-class counts for the transfer pairs only (``--transfer-pairs`` drawn over delta_acc like the
    transfer planner); prints the times and the tables' sizes on disk."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from pipelines.plan_transfers import sample_pairs_by_delta
    from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA

    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        pairs_file, classes_file = Path(tmp) / "pairs.parquet", Path(tmp) / "pair_classes.parquet"
        t0 = time.perf_counter()
        chunks, t_write = [], 0.0
        with pq.ParquetWriter(pairs_file, PAIR_SCHEMA) as writer:
            for pairs, _ in iter_pair_scores(aligned, chunk_elements=args.chunk_elements, with_classes=False):
                t1 = time.perf_counter()
                writer.write_table(pairs)
                t_write += time.perf_counter() - t1
                chunks.append(pairs.select(["teacher", "student", "teacher_is_random", "delta_acc"]))
        t_pairs = time.perf_counter() - t0
        table = pa.concat_tables(chunks)
        t0 = time.perf_counter()
        n_class_rows = 0
        if args.pair_classes == "transfer_pairs":
            chosen = sample_pairs_by_delta(table, args.transfer_pairs, args.seed)
            classes = score_pairs(aligned, chosen)[1]
            n_class_rows = classes.num_rows
        else:
            classes = PAIR_CLASS_SCHEMA.empty_table()
        pq.write_table(classes, classes_file)
        t_classes = time.perf_counter() - t0
        size_pairs, size_classes = pairs_file.stat().st_size, classes_file.stat().st_size
    total = t_align + t_pairs + t_classes
    n_pairs = table.num_rows
    print(f"score.pair_classes = {args.pair_classes!r}: pairs {n_pairs}; pair_classes rows {n_class_rows}"
          + (f" ({args.transfer_pairs} transfer pairs)" if args.pair_classes == "transfer_pairs" else ""))
    print(f"align predictions                      : {t_align:6.2f} s")
    print(f"score all pairs + write pairs.parquet  : {t_pairs:6.2f} s  ({t_pairs / n_pairs * 1e6:.1f} us per pair; "
          f"{t_write:.2f} s of it writing)")
    print(f"per-class counts of the kept pairs     : {t_classes:6.2f} s")
    print(f"total (align + pairs + kept classes)   : {total:6.2f} s  -> {'UNDER' if total < args.target_s else 'OVER'} "
          f"the {args.target_s:g} s target")
    size = size_pairs + size_classes
    print(f"on disk: pairs.parquet {size_pairs / 1e6:.1f} MB + pair_classes.parquet {size_classes / 1e6:.2f} MB = "
          f"{size / 1e9:.3f} GB -> {'UNDER' if size <= args.target_gb * 1e9 else 'OVER'} the {args.target_gb:g} GB target")
    print(f"peak RSS: {peak_rss_mb():.0f} MB; load average after: {os.getloadavg()[0]:.2f}")


# ------------------------------------------------------------------------------------------- naive run
def run_naive(args: argparse.Namespace) -> None:
    import timm
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    m, n, c = args.naive_models, args.naive_images, 100
    print(f"\n== naive vs cached: {m} tiny timm resnet18 (channels 16..128), {n} random 32x32 images, "
          f"{m * (m - 1)} ordered pairs, torch threads={args.threads}")
    models = {}
    for i in range(m):
        torch.manual_seed(args.seed + i)
        net = timm.create_model("resnet18", num_classes=c, pretrained=False, channels=(16, 32, 64, 128))
        models[f"tiny_resnet18_{i}"] = net.eval()
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    sample_ids = np.arange(n, dtype=np.int64)

    @torch.no_grad()
    def predict(net: torch.nn.Module) -> np.ndarray:
        out = [net(images[i : i + args.batch]).argmax(1) for i in range(0, n, args.batch)]
        return torch.cat(out).numpy().astype(np.int32)

    def table(pred: np.ndarray) -> pa.Table:
        return pa.table({"sample_id": sample_ids, "label": labels.numpy().astype(np.int32), "pred": pred})

    with torch.no_grad():  # warm-up: first calls pay one-off allocator and kernel set-up costs
        for net in models.values():
            net(images[: args.batch])

    # cached: one pass per model, then every pair from the cache
    t0 = time.perf_counter()
    cache = {mid: table(predict(net)) for mid, net in models.items()}
    t_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast, _ = score_pairs(cache, num_classes=c)
    t_fast_score = time.perf_counter() - t0
    t_fast = t_pass + t_fast_score

    # naive: every pair re-runs both of its models, and is scored on its own
    t0 = time.perf_counter()
    naive_rows = []
    for t_id in models:
        for s_id in models:
            if t_id == s_id:
                continue
            pair_preds = {t_id: table(predict(models[t_id])), s_id: table(predict(models[s_id]))}
            rows, _ = score_pairs(pair_preds, [(t_id, s_id)], num_classes=c)
            naive_rows.append(rows)
    t_naive = time.perf_counter() - t0
    naive = pa.concat_tables(naive_rows).sort_by([("teacher", "ascending"), ("student", "ascending")])
    same = same_tables(naive, fast)

    print(f"cached: {m} prediction passes {t_pass:.2f} s + vectorised scoring {t_fast_score * 1e3:.1f} ms "
          f"= {t_fast:.2f} s")
    print(f"naive : {2 * m * (m - 1)} prediction passes (2 per pair) + per-pair scoring = {t_naive:.2f} s")
    print(f"ratio naive / cached: {t_naive / t_fast:.1f}x  (inference-bound expectation 2*(M-1) = {2 * (m - 1)}x); "
          f"identical pair tables: {same}")


def same_tables(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables: integer/string columns exactly, floats to 1e-12 relative (entropy sums in another
    order differ in the last bit between one batched call and per-pair calls)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            xa = np.asarray(x.to_numpy(zero_copy_only=False), dtype=float)
            ya = np.asarray(y.to_numpy(zero_copy_only=False), dtype=float)
            if not np.allclose(xa, ya, rtol=1e-12, atol=0, equal_nan=True):
                return False
        elif not x.equals(y):
            return False
    return True


def run_zoo_naive(args: argparse.Namespace) -> None:
    """Cached vs naive on a real results root (e.g. runs/demo after its zoo stage): the trained zoo, its
    data, each model with its own preprocessing."""
    import torch

    from pipelines.executors import _source
    from zoo_study.config import load_config
    from zoo_study.data.preprocess import ModelPreprocess
    from zoo_study.predict import predict
    from zoo_study.store import ResultsLayout

    torch.set_num_threads(args.threads)
    layout = ResultsLayout(args.zoo)
    cfg = load_config(layout.config_file)
    from pipelines.study import Study

    study = Study.from_config(cfg)
    source = _source(study.data)
    split = source.eval.subset(np.arange(min(args.naive_images, len(source.eval))))
    plans = [m for m in study.models if m.has_weights_file][: args.naive_models]
    models = {}
    for p in plans:
        inputs = {str(layout.weights(p.model_id).relative_to(layout.root)): layout.weights(p.model_id).read_bytes()}
        net, rec = p.build(inputs, source.num_classes, "cpu")
        models[p.model_id] = (net, ModelPreprocess.from_data_config(rec.data_config))
    m = len(models)
    print(f"\n== naive vs cached on the trained zoo of {args.zoo}: {m} models, {len(split)} eval images, "
          f"{m * (m - 1)} ordered pairs, torch threads={args.threads}")

    def run(mid: str) -> pa.Table:
        net, pre = models[mid]
        return predict(net, split, pre, model_id=mid, batch_size=args.batch, topk=0)

    for mid in models:  # warm-up
        run(mid)
    t0 = time.perf_counter()
    cache = {mid: run(mid) for mid in models}
    t_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast, _ = score_pairs(cache, num_classes=source.num_classes)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = []
    for t_id in models:
        for s_id in models:
            if t_id != s_id:
                r, _ = score_pairs({t_id: run(t_id), s_id: run(s_id)}, [(t_id, s_id)], num_classes=source.num_classes)
                rows.append(r)
    t_naive = time.perf_counter() - t0
    naive = pa.concat_tables(rows).sort_by([("teacher", "ascending"), ("student", "ascending")])
    print(f"cached: {m} prediction passes {t_pass:.2f} s + vectorised scoring {t_score * 1e3:.1f} ms = {t_pass + t_score:.2f} s")
    print(f"naive : {2 * m * (m - 1)} prediction passes + per-pair scoring = {t_naive:.2f} s")
    print(f"ratio naive / cached: {t_naive / (t_pass + t_score):.1f}x (expectation 2*(M-1) = {2 * (m - 1)}x); "
          f"identical pair tables: {same_tables(naive, fast)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=300, help="zoo size N for the scale run (default 300)")
    ap.add_argument("--samples", type=int, default=50_000, help="evaluation samples n (default 50000)")
    ap.add_argument("--classes", type=int, default=1000, help="classes C (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-elements", type=int, default=1 << 22, help="(pair, class) cells per chunk")
    ap.add_argument("--shuffle-fraction", type=float, default=0.1,
                    help="share of prediction tables with shuffled rows (default 0.1; 1.0 = worst case)")
    ap.add_argument("--materialize", action="store_true",
                    help="build the full tables with score_pairs instead of streaming chunks (needs GBs at full scale)")
    ap.add_argument("--target-s", type=float, default=10.0, help="time target printed against (default 10 s)")
    ap.add_argument("--pair-classes", choices=("all", "transfer_pairs", "none"), default="all",
                    help="score.pair_classes: 'all' (default) counts every pair's classes; 'transfer_pairs' / 'none' "
                    "write pairs.parquet and the kept pairs' counts to disk and print their sizes")
    ap.add_argument("--transfer-pairs", type=int, default=30, help="pairs keeping per-class counts (default 30)")
    ap.add_argument("--out-dir", help="folder for the Parquet files of --pair-classes runs (default: the temp folder)")
    ap.add_argument("--target-gb", type=float, default=5.0, help="size target of the pair tables (default 5 GB)")
    ap.add_argument("--lean", action="store_true",
                    help="synthetic tables with only the columns scoring reads (a 1,500-model zoo in ~0.5 GB)")
    ap.add_argument("--skip-scale", action="store_true", help="only run the naive comparison")
    ap.add_argument("--naive", action="store_true", help="also compare against re-running both models per pair")
    ap.add_argument("--naive-models", type=int, default=4, help="tiny models in the naive comparison (default 4)")
    ap.add_argument("--naive-images", type=int, default=1500, help="random 32x32 images (default 1500)")
    ap.add_argument("--batch", type=int, default=500, help="inference batch size (default 500)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the naive comparison (default 1)")
    ap.add_argument("--zoo", metavar="RESULTS", help="also compare naive vs cached on the trained zoo of a results "
                    "root (e.g. runs/demo after `zoo-study run --stage zoo`)")
    args = ap.parse_args(argv)
    if args.transfer_pairs < 1 or args.models < 2:
        ap.error(f"--transfer-pairs must be >= 1 and --models >= 2, got {args.transfer_pairs} and {args.models}")
    if not args.skip_scale:
        run_scale(args)
    if args.naive:
        run_naive(args)
    if args.zoo:
        run_zoo_naive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
