"""Choose a study's transfer budget by a criterion that involves none of the methods under comparison.

    python -m pipelines.select_budget pipelines/configs/claims.toml [--pairs 4] [--out docs/BUDGET_SELECTION.md]

Why: on a small zoo a transfer of a few dozen SGD steps moves a handful of evaluation samples, so every
method "ties" and no claim can be tested; but a budget tuned until one method wins would decide the
comparison in advance. The criterion used here is the paper's own observation about the *baseline*: in
the regime the paper studies, plain KL distillation from a clearly weaker teacher (at least 10 points
below the student) measurably *forgets*: the student loses more correct predictions than it gains. A
budget is adequate when that happens here too, pooled over the weak-teacher pairs and in most of them
individually (exact McNemar test, 5%). Candidates are tried from the cheapest up; the first adequate one
is chosen. KL+DP, MCL and the others are never run during the selection.

Two guards keep the selection from deciding a claim by construction: every candidate with more steps at
the paper's lr (up to the paper's 20 epochs over the transfer set) comes before any lr scaling, and every
candidate runs with ``transfer.protocol = 'paper_ratios'`` (MCL's tau rescaled to the paper's share, no lr
outside its paper grid); and the weak-teacher pairs it judges on are disjoint from the study's own
transfer pairs, so the criterion is not evaluated on the data the claims are then tested on. The claims
whose content is the criterion itself (KL-Dist forgets from weaker teachers: 3a, 3b, 4c, 6a) are marked
in the Claims table as conditional on it.

Each candidate runs in its own results root next to the study's (zoo, predictions and scores are
hard-linked from the study root, so nothing is retrained), through the normal pipeline (``zoo-study run
--stage transfer``). The study root's zoo, predict and score stages must have run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyarrow as pa

from zoo_study.config import ConfigError, load_config
from zoo_study.stats import mcnemar_exact_p, paired_delta_ci
from zoo_study.store import PAIR_SCHEMA, TRANSFER_SUMMARY_SCHEMA, read_parquet_checked

WEAKER_BY = 0.10
EXIT_MISUSE = 2


def _die(msg: str) -> NoReturn:
    print(f"select_budget: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_MISUSE)  # teacher accuracy at least 10 points below the student's


@dataclass(frozen=True)
class Budget:
    label: str
    epochs: int
    transfer_fraction: float
    lr_scale: float

    def overrides(self) -> list[str]:
        return [f"transfer.epochs={self.epochs}", f"transfer.transfer_fraction={self.transfer_fraction}",
                f"transfer.lr_scale={self.lr_scale}", f"transfer.eval_every={self.epochs}",
                "transfer.protocol=paper_ratios"]


# from the cheapest up: more steps at the paper's lr first (epochs x transfer-set size, up to the paper's 20
# epochs), and only then a larger step size for all methods (kept inside each method's paper grid)
CANDIDATES = (
    Budget("B0 demo", 3, 0.1, 1.0),
    Budget("B1", 3, 0.25, 1.0),
    Budget("B2", 5, 0.25, 1.0),
    Budget("B3", 10, 0.25, 1.0),
    Budget("B4 paper epochs", 20, 0.25, 1.0),
    Budget("B5", 5, 0.25, 10.0),
    Budget("B6", 8, 0.5, 10.0),
)


def weak_teacher_pairs(root: Path, k: int, exclude: set[tuple[str, str]] = frozenset()) -> list[tuple[str, str, float]]:
    """``k`` (teacher, student, delta_acc) trained pairs with the teacher >= 10 points weaker, spread over
    that range (the same stratified draw the study uses), none of them in ``exclude`` (the study's own
    transfer pairs: the selection must not be judged on the data the claims are tested on)."""
    from pipelines.plan_transfers import sample_pairs_by_delta

    table = read_parquet_checked(root / "scores" / "pairs.parquet", PAIR_SCHEMA)
    if table is None:
        _die(f"{root}/scores/pairs.parquet is missing; run the zoo, predict and score stages of the study first")
    rows = [r for r in table.to_pylist() if not r["teacher_is_random"] and r["delta_acc"] <= -WEAKER_BY
            and (r["teacher"], r["student"]) not in exclude]
    if not rows:
        _die("no trained pair outside the study's own transfer pairs has a teacher 10 points weaker than its student")
    weak = pa.Table.from_pylist(rows, schema=table.schema)
    picks = sample_pairs_by_delta(weak, k, seed=0)
    dacc = {(r["teacher"], r["student"]): r["delta_acc"] for r in rows}
    return [(t, s, dacc[(t, s)]) for t, s in picks]


def _link_root(study_root: Path, target: Path) -> None:
    """A results root sharing the study's zoo, predictions and scores (hard links, no copies)."""
    if target.exists():
        return
    target.mkdir(parents=True)
    for name in ("zoo", "predictions", "scores"):
        shutil.copytree(study_root / name, target / name, copy_function=os.link)
    (target / "_jobs").mkdir()
    for rec in (study_root / "_jobs").glob("*.json"):
        os.link(rec, target / "_jobs" / rec.name)


def candidate_overrides(root: Path, budget: Budget, pairs: list[tuple[str, str, float]]) -> list[str]:
    """The ``--set`` arguments that turn the study's config into one candidate's run: KL-Dist alone on the
    weak-teacher pairs, nothing else (no multi-teacher, hparam, replicate seeds or per-method pair counts)."""
    explicit = "[" + ", ".join(f"['{t}', '{s}']" for t, s, _ in pairs) + "]"
    sets = [f"study.results_root={root}", "transfer.methods=['kl']", "transfer.pairs=explicit",
            f"transfer.explicit={explicit}", "multi_teacher.enabled=false", "hparam_search.enabled=false",
            "transfer.replicate.n_pairs=0", "transfer.replicate.methods=[]", "transfer.method_pairs={}",
            *budget.overrides()]
    return [arg for item in sets for arg in ("--set", item)]


def run_budget(config: str, study_root: Path, budget: Budget, pairs: list[tuple[str, str, float]]) -> list[dict]:
    from pipelines.cli import main

    root = study_root.parent / f"{study_root.name}_budget" / budget.label.split()[0]
    _link_root(study_root, root)
    argv = ["run", config, "--stage", "transfer", "--no-progress", *candidate_overrides(root, budget, pairs)]
    t0 = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - t0
    if code not in (0, None):
        raise SystemExit(f"select_budget: the transfer stage of {budget.label} failed (exit {code}); see {root}")
    rows = []
    for path in sorted((root / "transfers").glob("*/summary.parquet")):
        t = read_parquet_checked(path, TRANSFER_SUMMARY_SCHEMA)
        if t is not None:
            rows.extend(t.to_pylist())
    wanted = {(t, s) for t, s, _ in pairs}
    rows = [r for r in rows if (r["teacher"], r["student"]) in wanted and r["method"] == "kl"
            and r["epochs"] == budget.epochs]
    for r in rows:
        r["_wall"] = wall
    return rows


def verdict(rows: list[dict]) -> dict:
    g = sum(r["n_gain"] for r in rows)
    l = sum(r["n_loss"] for r in rows)
    n = sum(r["n_eval"] for r in rows)
    forgets = [r for r in rows if r["n_loss"] > r["n_gain"] and r["p_mcnemar"] < 0.05]
    p = mcnemar_exact_p(g, l)
    lo, hi = paired_delta_ci(g, l, n)
    adequate = l > g and p < 0.05 and len(forgets) * 2 > len(rows)
    return {"gain": g, "loss": l, "n": n, "p": p, "lo": lo, "hi": hi, "forgets": len(forgets), "pairs": len(rows),
            "adequate": adequate, "discordant_share": (g + l) / n if n else float("nan")}


def main_cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.select_budget", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--pairs", type=int, default=4, help="weak-teacher pairs per candidate (default 4)")
    ap.add_argument("--out", default=None, help="append the record as a Markdown table to this file")
    ap.add_argument("--all", action="store_true", help="run every candidate, not only up to the first adequate")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        _die(str(err))
    study_root = cfg.results_root().resolve()
    from pipelines.plan_transfers import transfer_pairs
    from pipelines.study import Study

    study_pairs = set(transfer_pairs(Study.from_config(cfg)) or [])
    pairs = weak_teacher_pairs(study_root, args.pairs, exclude=study_pairs)
    print("weak-teacher pairs (teacher -> student, delta_acc):")
    for t, s, d in pairs:
        print(f"  {t} -> {s}  {d * 100:+.1f} pp")
    lines = ["| budget | epochs | transfer set | lr scale | steps/transfer | wall s (all pairs) | gain | loss | "
             "pooled delta [95% CI] | p (McNemar) | pairs forgetting | discordant share | adequate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    chosen = None
    for b in CANDIDATES:
        rows = run_budget(args.config, study_root, b, pairs)
        v = verdict(rows)
        steps = rows[0]["n_train"] // min(rows[0]["batch_size"], rows[0]["n_train"]) * b.epochs if rows else 0
        wall = rows[0]["_wall"] if rows else float("nan")
        lines.append(f"| {b.label} | {b.epochs} | {b.transfer_fraction:g} | {b.lr_scale:g} | {steps} | {wall:.0f} | "
                     f"{v['gain']} | {v['loss']} | {100 * (v['gain'] - v['loss']) / max(v['n'], 1):+.2f} pp "
                     f"[{100 * v['lo']:+.2f}, {100 * v['hi']:+.2f}] | {v['p']:.2g} | {v['forgets']}/{v['pairs']} | "
                     f"{100 * v['discordant_share']:.1f}% | {'yes' if v['adequate'] else 'no'} |")
        print(lines[-1], flush=True)
        if v["adequate"] and chosen is None:
            chosen = b
            if not args.all:
                break
    summary = (f"chosen: {chosen.label} ({chosen.epochs} epochs, transfer_fraction {chosen.transfer_fraction:g}, "
               f"lr_scale {chosen.lr_scale:g})" if chosen else "no candidate met the criterion")
    print(summary)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines) + f"\n\n{summary}\n")
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main_cli())
