"""Benchmark: `zoo-study recommend` for one student over a whole zoo's teachers.

Builds a synthetic results root with every ordered pair of N models (default 1,500: 2,248,500 pair rows, the
pair table a whole-zoo score stage writes without per-class counts) and finished KL+DP transfers for S
students x T teachers, then times ``analysis.recommend.recommend`` for one student (connect + fit on the
transfers + leave-one-student-out quality + ranking of N - 1 teachers), several times, and prints the
median against the issue's target (< 1 s). The pair table's size on disk is printed too.

    python benchmarks/bench_recommend.py                  # 1,500 models
    python benchmarks/bench_recommend.py --models 300 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.db import connect
from analysis.recommend import recommend
from zoo_study.store import PAIR_SCHEMA, TOP_X_PERCENTS, ResultsLayout, write_parquet_atomic


def synthetic_root(root: Path, n_models: int, students: int, teachers: int, seed: int = 0) -> int:
    """Write pairs (all ordered pairs) and transfer summaries; returns the pair file's size in bytes."""
    rng = np.random.default_rng(seed)
    layout = ResultsLayout(root)
    ids = np.array([f"m{i:04d}" for i in range(n_models)])
    acc = rng.uniform(0.5, 0.9, n_models)
    t_idx, s_idx = np.nonzero(~np.eye(n_models, dtype=bool))
    n = t_idx.size
    rho_pos = np.clip(0.05 + 0.5 * np.maximum(acc[t_idx] - acc[s_idx], 0) + rng.normal(0, 0.01, n), 0.001, None)
    cols = {
        "teacher": pa.array(ids[t_idx]), "student": pa.array(ids[s_idx]),
        "teacher_is_random": pa.array(np.zeros(n, bool)), "n_samples": pa.array(np.full(n, 50_000, np.int64)),
        "num_classes": pa.array(np.full(n, 1000, np.int32)), "acc_t": pa.array(acc[t_idx]),
        "acc_s": pa.array(acc[s_idx]), "delta_acc": pa.array(acc[t_idx] - acc[s_idx]),
        "n_pos": pa.array((rho_pos * 50_000).astype(np.int64)), "n_neg": pa.array((rho_pos * 40_000).astype(np.int64)),
        "rho_pos": pa.array(rho_pos), "rho_neg": pa.array(rho_pos * 0.8),
        "entropy": pa.array(rng.uniform(5, 6.9, n)), "entropy_corrected": pa.array(rng.uniform(5, 6.9, n)),
        "entropy_null": pa.array(rng.uniform(5, 6.9, n)), "kappa": pa.array(rng.uniform(0.2, 0.7, n)),
    }
    for x in TOP_X_PERCENTS:
        cols[f"top{x}_classes"] = pa.array(np.full(n, int(10 * x), np.int32))
    table = pa.Table.from_arrays([cols[f.name] for f in PAIR_SCHEMA], schema=PAIR_SCHEMA)
    write_parquet_atomic(table, layout.pairs)
    rows = []
    for si in range(students):
        for tj in rng.choice(n_models, teachers, replace=False):
            if tj == si:
                continue
            rows.append({"job_id": f"j{si}_{tj}", "student": ids[si], "teacher": ids[tj],
                         "delta": 0.2 * (acc[tj] - acc[si]) + rng.normal(0, 0.002)})
    summaries = pa.table({
        "job_id": [r["job_id"] for r in rows], "study_part": ["transfer"] * len(rows), "method": ["kl_dp"] * len(rows),
        "mode": ["single"] * len(rows), "student": [r["student"] for r in rows],
        "teacher": [r["teacher"] for r in rows], "hparams_json": ["{}"] * len(rows),
        "delta_last": [r["delta"] for r in rows],
    })
    # one file holds them all: the transfers view reads whatever summary files exist
    out = layout.transfer_summary("bench")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(summaries, out)
    return layout.pairs.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1500)
    ap.add_argument("--students", type=int, default=40, help="students with finished transfers")
    ap.add_argument("--teachers", type=int, default=10, help="transfers per such student")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        size = synthetic_root(root, args.models, args.students, args.teachers)
        print(f"root: {args.models} models, {args.models * (args.models - 1):,} pair rows, pairs.parquet "
              f"{size / 1e6:.1f} MB; built in {time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with connect(root) as db:
                rec = recommend(db, "m0000", "kl_dp", top=10)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"recommend one student over {args.models - 1} teachers ({rec.basis}; "
              f"{rec.quality.n_transfers if rec.quality else 0} transfers): median {med:.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {args.repeats} runs); target < {args.target_s:g} s: "
              f"{'met' if med < args.target_s else 'NOT met'} (ratio {med / args.target_s:.2f})")


if __name__ == "__main__":
    main()
