"""Hand-made results roots for the analysis tests.

Why a builder instead of running the pipeline: the analysis layer must be testable on its own, on
numbers we chose by hand, and on roots in every state (empty, partial, complete). Every file is written
with the real schemas from :mod:`zoo_study.store`, so a schema change breaks these tests loudly.

Use :class:`RootBuilder` for small, explicit roots whose expected numbers a test states; use
:func:`build_full_root` for a complete root that exercises every figure and table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from zoo_study.methods import get_method
from zoo_study.stats import mcnemar_exact_p, paired_delta_ci
from zoo_study.store import (
    FAILURE_SCHEMA,
    MODEL_SCHEMA,
    PAIR_CLASS_SCHEMA,
    PAIR_SCHEMA,
    PREDICTION_SCHEMA,
    TOP_X_PERCENTS,
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
    ResultsLayout,
    table_from_rows,
)


def write_parquet_atomic(table, path):
    """Plain write (no fsync): fixtures need speed, not crash safety; same files as the store writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _kappa_by_hand(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean vectors, from its 2x2 table (the reference for the scorer)."""
    n = len(a)
    p_o = float(np.mean(a == b))
    pa_, pb_ = float(np.mean(a)), float(np.mean(b))
    p_e = pa_ * pb_ + (1 - pa_) * (1 - pb_)
    return None if p_e == 1.0 or n == 0 else (p_o - p_e) / (1 - p_e)


def grassberger_entropy(counts: Sequence[int]) -> float:
    """Grassberger's (2003) entropy estimate, written out per class (the reference for the scorer's
    vectorised lookup): H = ln n - (1/n) sum_k c_k G(c_k), G(c) = psi(c) + (-1)^c/2 (psi((c+1)/2) - psi(c/2))."""
    from scipy.special import digamma

    n = sum(counts)
    total = 0.0
    for c in counts:
        if c:
            total += c * (digamma(c) + 0.5 * (-1) ** c * (digamma((c + 1) / 2) - digamma(c / 2)))
    return max(math.log(n) - total / n, 0.0)


def _top_x_count(counts: Sequence[int], x: int) -> int:
    """Size of the smallest prefix of the descending counts whose share reaches x% (0 when no flips)."""
    total = sum(counts)
    if total == 0:
        return 0
    cum = 0
    for i, c in enumerate(sorted(counts, reverse=True), start=1):
        cum += c
        if 100 * cum >= x * total:
            return i
    return len(counts)


class RootBuilder:
    """Writes result files into ``root`` one call at a time, with defaults for columns a test ignores."""

    def __init__(self, root: str | Path, num_classes: int = 5):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout = ResultsLayout(self.root)
        self.num_classes = num_classes
        self.preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pairs: list[dict[str, Any]] = []
        self._pair_classes: list[dict[str, Any]] = []
        self._n_jobs = 0

    # ------------------------------------------------------------------------------------------ zoo
    def model(
        self,
        model_id: str,
        family: str = "cnn",
        params_m: float = 10.0,
        *,
        source: str = "timm",
        reported_top1: float | None = None,
        recipe: dict | None = None,
    ) -> None:
        row = {
            "model_id": model_id,
            "source": source,
            "arch": model_id,
            "family": family,
            "params_m": float(params_m),
            "num_classes": self.num_classes,
            "input_size": [3, 32, 32],
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "reported_top1": reported_top1,
            "checkpoint": None,
            "weights_id": None,
            "recipe_json": json.dumps(recipe) if recipe is not None else None,
            "train_seconds": None,
        }
        write_parquet_atomic(table_from_rows([row], MODEL_SCHEMA), self.layout.model_row(model_id))

    def predictions(self, model_id: str, labels: Sequence[int], preds: Sequence[int]) -> None:
        labels_a = np.asarray(labels, dtype=np.int64)
        preds_a = np.asarray(preds, dtype=np.int64)
        self.preds[model_id] = (labels_a, preds_a)
        rows = [
            {
                "model_id": model_id,
                "sample_id": i,
                "label": int(y),
                "pred": int(p),
                "p_label": 0.9 if y == p else 0.1,
                "p_max": 0.9,
                "topk": [int(p)],
            }
            for i, (y, p) in enumerate(zip(labels_a, preds_a))
        ]
        write_parquet_atomic(table_from_rows(rows, PREDICTION_SCHEMA), self.layout.predictions(model_id))

    # --------------------------------------------------------------------------------------- scores
    def pair_row(
        self,
        teacher: str,
        student: str,
        *,
        acc_t: float,
        acc_s: float,
        rho_pos: float,
        rho_neg: float = 0.01,
        entropy: float | None = 1.0,
        entropy_corrected: float | None = None,
        entropy_null: float | None = None,
        kappa: float | None = None,
        teacher_is_random: bool = False,
        n_samples: int = 100,
        class_flips: dict[int, int] | None = None,
    ) -> None:
        """An explicit pair row (and its per-class positive flips, if given)."""
        counts = [0] * self.num_classes
        for k, c in (class_flips or {}).items():
            counts[k] = c
            self._pair_classes.append(
                {"teacher": teacher, "student": student, "class_id": k, "pos_flips": c, "neg_flips": 0}
            )
        row = {
            "teacher": teacher,
            "student": student,
            "teacher_is_random": teacher_is_random,
            "n_samples": n_samples,
            "num_classes": self.num_classes,
            "acc_t": acc_t,
            "acc_s": acc_s,
            "delta_acc": acc_t - acc_s,
            "n_pos": int(round(rho_pos * n_samples)),
            "n_neg": int(round(rho_neg * n_samples)),
            "rho_pos": rho_pos,
            "rho_neg": rho_neg,
            "entropy": entropy,
            "entropy_corrected": entropy if entropy_corrected is None else entropy_corrected,
            "entropy_null": entropy_null,
            "kappa": kappa,
        }
        for x in TOP_X_PERCENTS:
            row[f"top{x}_classes"] = _top_x_count(counts, x)
        self._pairs.append(row)

    def score_pair(self, teacher: str, student: str, *, teacher_is_random: bool = False) -> dict[str, Any]:
        """Score a pair from the predictions given earlier (a tiny reference of the score stage)."""
        y, pt = self.preds[teacher]
        y2, ps = self.preds[student]
        assert np.array_equal(y, y2), "teacher and student predictions must share labels"
        t_ok, s_ok = pt == y, ps == y
        pos, neg = t_ok & ~s_ok, ~t_ok & s_ok
        n = len(y)
        counts = [int(np.sum(pos & (y == k))) for k in range(self.num_classes)]
        neg_counts = [int(np.sum(neg & (y == k))) for k in range(self.num_classes)]
        total = sum(counts)
        entropy = None
        if total:
            entropy = -sum((c / total) * math.log(c / total) for c in counts if c)
        # the student's errors per class: the null model's population (its plug-in entropy, by hand)
        errors = [int(np.sum(~s_ok & (y == k))) for k in range(self.num_classes)]
        e_total = sum(errors)
        entropy_null = -sum((e / e_total) * math.log(e / e_total) for e in errors if e) if e_total else None
        for k in range(self.num_classes):
            self._pair_classes.append(
                {"teacher": teacher, "student": student, "class_id": k, "pos_flips": counts[k], "neg_flips": neg_counts[k]}
            )
        row = {
            "teacher": teacher,
            "student": student,
            "teacher_is_random": teacher_is_random,
            "n_samples": n,
            "num_classes": self.num_classes,
            "acc_t": float(t_ok.mean()),
            "acc_s": float(s_ok.mean()),
            "delta_acc": float(t_ok.mean() - s_ok.mean()),
            "n_pos": int(pos.sum()),
            "n_neg": int(neg.sum()),
            "rho_pos": float(pos.mean()),
            "rho_neg": float(neg.mean()),
            "entropy": entropy,
            "entropy_corrected": None if entropy is None else grassberger_entropy(counts),
            "entropy_null": entropy_null,
            "kappa": _kappa_by_hand(t_ok, s_ok),
        }
        for x in TOP_X_PERCENTS:
            row[f"top{x}_classes"] = _top_x_count(counts, x)
        self._pairs.append(row)
        return row

    def write_scores(self) -> None:
        """Write pairs.parquet and pair_classes.parquet with every pair added so far."""
        write_parquet_atomic(table_from_rows(self._pairs, PAIR_SCHEMA), self.layout.pairs)
        write_parquet_atomic(table_from_rows(self._pair_classes, PAIR_CLASS_SCHEMA), self.layout.pair_classes)

    def write_semantics(self) -> None:
        """The semantics stage's tables for the pairs written so far: classes named "<pattern> <shape>"
        with the shape as super-class, the lexical encoder, 20 random sets."""
        from zoo_study.scoring.semantics import LexicalEncoder, semantic_tables

        shapes, patterns = ("circle", "square"), ("striped", "dotted", "solid")
        names = [f"{patterns[k % 3]} {shapes[k % 2]}" for k in range(self.num_classes)]
        emb, sem = semantic_tables(table_from_rows(self._pairs, PAIR_SCHEMA),
                                   table_from_rows(self._pair_classes, PAIR_CLASS_SCHEMA), names,
                                   [k % 2 for k in range(self.num_classes)], list(shapes), LexicalEncoder(),
                                   random_sets=20, seed=0)
        write_parquet_atomic(emb, self.layout.class_embeddings)
        write_parquet_atomic(sem, self.layout.pair_semantics)

    # ------------------------------------------------------------------------------------ transfers
    def _job_id(self, *parts: object) -> str:
        self._n_jobs += 1
        h = hashlib.sha256(repr((self._n_jobs,) + parts).encode()).hexdigest()[:12]
        return f"job{self._n_jobs:03d}_{h}"

    def summary_row(
        self,
        student: str,
        teacher: str | Sequence[str],
        method: str,
        delta_last: float,
        *,
        mode: str = "single",
        study_part: str | None = None,
        hparams: dict[str, Any] | None = None,
        seed: int = 0,
        acc_before: float = 0.7,
        gain: float | None = None,
        loss: float | None = None,
        delta_best: float | None = None,
        rho_pos_before: float | None = 0.05,
        rho_pos_after: float | None = 0.04,
        rho_neg_before: float | None = 0.03,
        rho_neg_after: float | None = 0.03,
        teacher_share: float | None = 0.4,
        teacher_share_pos: float | None = None,
        teacher_share_neg: float | None = None,
        student_init: str = "pretrained",
        mixup: str = "none",
        mixup_share: float = 0.0,
        variant: str | None = None,
        lr: float = 1e-4,
        job_id: str | None = None,
        n_eval: int = 1000,
        n_gain: int | None = None,
        n_loss: int | None = None,
    ) -> dict[str, Any]:
        """One summary row. The paired counts (n_gain, n_loss) and the uncertainty columns (p_mcnemar,
        delta_ci_low/high) are computed with :mod:`zoo_study.stats` from the gain and loss shares and
        ``n_eval`` (rounded to whole samples), or taken as given (then gain = n_gain / n_eval and so on,
        and delta_last must equal (n_gain - n_loss) / n_eval)."""
        teachers = [teacher] if isinstance(teacher, str) else list(teacher)
        if study_part is None:
            study_part = "transfer" if mode == "single" else "multi_teacher"
        if n_gain is not None or n_loss is not None:
            if n_gain is None or n_loss is None:
                raise ValueError("give both n_gain and n_loss, or neither")
            if abs(delta_last - (n_gain - n_loss) / n_eval) > 1e-12:
                raise ValueError(f"delta_last {delta_last} != ({n_gain} - {n_loss}) / {n_eval}")
            gain, loss = n_gain / n_eval, n_loss / n_eval
        else:
            if gain is None or loss is None:
                gain = max(delta_last, 0.0) + 0.01
                loss = gain - delta_last
            n_gain, n_loss = int(round(gain * n_eval)), int(round(loss * n_eval))
        ci_low, ci_high = paired_delta_ci(n_gain, n_loss, n_eval)
        best = max(delta_last, delta_best if delta_best is not None else delta_last)
        return {
            "job_id": job_id or self._job_id(student, tuple(teachers), method, mode, seed, json.dumps(hparams)),
            "study_part": study_part,
            "method": method,
            "mode": mode,
            "student": student,
            "teacher": "+".join(teachers),
            "teachers": teachers,
            "hparams_json": json.dumps(hparams or {}, sort_keys=True),
            "lr": lr,
            "temperature": 1.0,
            "epochs": 3,
            "batch_size": 32,
            "seed": seed,
            "n_train": 100,
            "n_eval": n_eval,
            "acc_before": acc_before,
            "acc_last": acc_before + delta_last,
            "acc_best": acc_before + best,
            "best_epoch": 3,
            "delta_last": delta_last,
            "delta_best": best,
            "gain": gain,
            "loss": loss,
            "n_gain": n_gain,
            "n_loss": n_loss,
            "p_mcnemar": mcnemar_exact_p(n_gain, n_loss),
            "delta_ci_low": ci_low,
            "delta_ci_high": ci_high,
            "rho_pos_before": rho_pos_before,
            "rho_pos_after": rho_pos_after,
            "rho_neg_before": rho_neg_before,
            "rho_neg_after": rho_neg_after,
            "teacher_share_pos": teacher_share_pos,
            "teacher_share_neg": teacher_share_neg,
            "teacher_share": teacher_share,
            "runtime_s": 1.5,
            "device": "cpu",
            "versions_json": "{}",
            "student_init": student_init,
            "mixup": mixup,
            "mixup_share": mixup_share,
            "variant": variant,
            "method_info_json": None,
        }

    def transfer(self, student: str, teacher: str | Sequence[str], method: str, delta_last: float, **kw: Any) -> str:
        """Write one transfer summary; returns its job id."""
        row = self.summary_row(student, teacher, method, delta_last, **kw)
        write_parquet_atomic(table_from_rows([row], TRANSFER_SUMMARY_SCHEMA), self.layout.transfer_summary(row["job_id"]))
        return row["job_id"]

    def hparam(self, student: str, teacher: str, method: str, delta_last: float, **kw: Any) -> str:
        row = self.summary_row(student, teacher, method, delta_last, study_part="hparam", **kw)
        write_parquet_atomic(table_from_rows([row], TRANSFER_SUMMARY_SCHEMA), self.layout.hparam_row(row["job_id"]))
        return row["job_id"]

    def transfer_predictions(
        self, job_id: str, labels: Sequence[int], pred_before: Sequence[int], pred_after: Sequence[int]
    ) -> None:
        rows = [
            {"job_id": job_id, "sample_id": i, "label": int(y), "pred_before": int(b), "pred_after": int(a)}
            for i, (y, b, a) in enumerate(zip(labels, pred_before, pred_after))
        ]
        write_parquet_atomic(table_from_rows(rows, TRANSFER_PREDICTION_SCHEMA), self.layout.transfer_predictions(job_id))

    def epochs(self, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Epoch rows; each needs stage, epoch, delta, gain, loss (acc and the rest default)."""
        full = []
        for r in rows:
            full.append(
                {
                    "job_id": job_id,
                    "stage": r.get("stage", 0),
                    "stage_teacher": r.get("stage_teacher"),
                    "epoch": r["epoch"],
                    "acc": r.get("acc", 0.7 + r["delta"]),
                    "delta": r["delta"],
                    "gain": r["gain"],
                    "loss": r["loss"],
                    "train_loss": r.get("train_loss", None if r["epoch"] == 0 else 0.5),
                    "teacher_share": r.get("teacher_share"),
                }
            )
        write_parquet_atomic(table_from_rows(full, TRANSFER_EPOCH_SCHEMA), self.layout.transfer_epochs(job_id))

    def failed_transfer(self, student: str, teacher: str, method: str, *, seed: int = 0, attempts: int = 2,
                        job_id: str | None = None, **config: Any) -> str:
        """A failure record of a transfer job, with the job spec the planner writes (student, teachers,
        the resolved transfer config); returns its job id."""
        from zoo_study.transfer.config import TransferConfig

        def model(m: str) -> dict[str, Any]:
            return {"model_id": m, "kind": "embedded", "spec": {}}

        tconf = TransferConfig(method=method, seed=seed, **config).to_dict()
        spec = {"student": model(student), "teachers": [model(teacher)], "config": tconf, "data": {}, "device": "cpu"}
        job_id = job_id or hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.failure(job_id, spec_json=json.dumps(spec, sort_keys=True), attempts=attempts,
                     error="transfer diverged: loss is nan")
        return job_id

    def failure(self, job_id: str, stage: str = "transfer", error: str = "NaN loss at epoch 2", *,
                spec_json: str = "{}", attempts: int = 2) -> None:
        row = {
            "job_id": job_id,
            "stage": stage,
            "spec_json": spec_json,
            "error": error,
            "traceback": "Traceback (most recent call last):\n  ...\nFloatingPointError: nan",
            "attempts": attempts,
            "failed_at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        }
        write_parquet_atomic(table_from_rows([row], FAILURE_SCHEMA), self.layout.failure(job_id))


# --------------------------------------------------------------------------------------- full root
STUDENTS = (("vit_s", "transformer", 22.0, 0.70), ("resnet_s", "cnn", 25.0, 0.65), ("mixer_s", "mlp", 18.0, 0.60))
TEACHERS = (
    ("t_weak", "cnn", 5.0, 0.50),
    ("t_equal", "transformer", 30.0, 0.68),
    ("t_strong", "cnn", 80.0, 0.85),
    ("t_mlp", "mlp", 40.0, 0.75),
)
RANDOM_TEACHER = ("t_random", "cnn", 25.0)
# method key -> (method column, hparams, share of positive flips fixed, share of correct samples broken)
FULL_METHODS = {
    "kl": ("kl", {}, 0.30, 0.12),
    "xe_kl": ("xe_kl", {"lambda": 0.5}, 0.30, 0.10),
    "xe_kl_mcl": ("xe_kl_mcl", {"tau": 0.9999, "N": 2}, 0.25, 0.03),
    "kl_dp": ("kl_dp", {}, 0.40, 0.02),
    "kl_dp_unsup": ("kl_dp", {"unsupervised": True}, 0.30, 0.03),
}


def _model_preds(rng: np.random.Generator, labels: np.ndarray, acc: float, num_classes: int) -> np.ndarray:
    """Predictions right on a class-skewed random subset, so teachers have areas of expertise."""
    skew = rng.uniform(-0.25, 0.25, size=num_classes)
    p_right = np.clip(acc + skew[labels], 0.02, 0.98)
    right = rng.random(len(labels)) < p_right
    wrong = (labels + 1 + rng.integers(0, num_classes - 1, size=len(labels))) % num_classes
    return np.where(right, labels, wrong)


def build_full_root(root: str | Path, n: int = 80, num_classes: int = 5, seed: int = 0) -> RootBuilder:
    """A complete small root: zoo, predictions, scores, transfers of 5 methods, multi-teacher, grid, failure."""
    rng = np.random.default_rng(seed)
    b = RootBuilder(root, num_classes=num_classes)
    labels = np.arange(n) % num_classes
    for name, fam, params, acc in STUDENTS + TEACHERS:
        b.model(name, fam, params, reported_top1=100 * acc)
        b.predictions(name, labels, _model_preds(rng, labels, acc, num_classes))
    rname, rfam, rparams = RANDOM_TEACHER
    b.model(rname, rfam, rparams, source="random")
    b.predictions(rname, labels, rng.integers(0, num_classes, size=n))

    for s, *_ in STUDENTS:
        for t, *_ in TEACHERS:
            b.score_pair(t, s)
        b.score_pair(rname, s, teacher_is_random=True)
        for s2, *_ in STUDENTS:
            if s2 != s:
                b.score_pair(s2, s)
    b.write_scores()
    b.write_semantics()

    single_delta: dict[tuple[str, str, str], float] = {}
    single_counts: dict[tuple[str, str, str], tuple[int, int]] = {}
    rng_route = np.random.default_rng(seed + 1000)  # its own stream: the other draws stay as they were
    for s, *_ in STUDENTS:
        y, ps = b.preds[s]
        for t, *_ in TEACHERS:
            _, pt = b.preds[t]
            pos = (pt == y) & (ps != y)
            for key, (method, hp, p_fix, p_break) in FULL_METHODS.items():
                fix = pos & (rng.random(n) < p_fix)
                brk = (ps == y) & (rng.random(n) < p_break)
                after = np.where(fix, y, ps)
                after = np.where(brk, (y + 1) % num_classes, after)
                gain = float(np.mean((ps != y) & (after == y)))
                loss = float(np.mean((ps == y) & (after != y)))
                delta = gain - loss
                single_delta[(s, t, key)] = delta
                n_gain = int(np.sum((ps != y) & (after == y)))
                n_loss = int(np.sum((ps == y) & (after != y)))
                single_counts[(s, t, key)] = (n_gain, n_loss)
                routed = get_method(method).routes  # the registry flag, not the name
                acc_b = float(np.mean(ps == y))
                rho_pos_after = float(np.mean((pt == y) & (after != y)))
                rho_neg_after = float(np.mean((pt != y) & (after == y)))
                job = b.transfer(
                    s,
                    t,
                    method,
                    delta,
                    hparams=hp,
                    acc_before=acc_b,
                    gain=gain,
                    loss=loss,
                    rho_pos_before=float(pos.mean()),
                    rho_pos_after=rho_pos_after,
                    rho_neg_before=float(np.mean((pt != y) & (ps == y))),
                    rho_neg_after=rho_neg_after,
                    teacher_share=0.3 + 0.1 * rng.random(),
                    teacher_share_pos=float(rng_route.uniform(0.6, 0.85)) if routed else None,
                    teacher_share_neg=float(rng_route.uniform(0.05, 0.15)) if routed else None,
                    n_eval=n,
                )
                b.transfer_predictions(job, y, ps, after)
                b.epochs(
                    job,
                    [
                        {"epoch": e, "delta": delta * e / 3, "gain": gain * e / 3, "loss": loss * e / 3}
                        for e in range(4)
                    ],
                )

    chain = ["t_weak", "t_equal", "t_strong"]
    for s in ("vit_s", "resnet_s"):
        # the multi-teacher stage's own single-teacher baselines (study_part multi_teacher, mode single)
        for t in chain:
            g, l = single_counts[(s, t, "kl_dp")]
            b.transfer(s, t, "kl_dp", (g - l) / n, study_part="multi_teacher", n_eval=n, n_gain=g, n_loss=l)
        best_n = max(single_counts[(s, t, "kl_dp")][0] - single_counts[(s, t, "kl_dp")][1] for t in chain)
        for mode, d_n in (("sequential", best_n + 2), ("parallel", best_n - 1), ("soup", best_n - 2)):
            n_loss = 3 + max(0, -d_n)
            delta = d_n / n
            job = b.transfer(s, chain, "kl_dp", delta, mode=mode, n_eval=n, n_gain=d_n + n_loss, n_loss=n_loss)
            if mode == "sequential":
                g_end, l_end = (d_n + n_loss) / n, n_loss / n
                rows = []
                for stage, t in enumerate(chain):
                    for e in range(3):
                        frac = (stage + e / 2) / len(chain)
                        rows.append(
                            {
                                "stage": stage,
                                "stage_teacher": t,
                                "epoch": e,
                                "delta": delta * frac,
                                "gain": g_end * frac,
                                "loss": l_end * frac,
                            }
                        )
                rows.append({"stage": 2, "stage_teacher": "t_strong", "epoch": 3, "delta": delta, "gain": g_end, "loss": l_end})
                b.epochs(job, rows)

    for lr, d in ((1e-4, 0.004), (1e-3, 0.002), (1e-2, -0.01)):
        for s in ("vit_s", "resnet_s"):
            b.hparam(s, "t_strong", "kl_dp", d, hparams={"lr": lr}, lr=lr)
    b.failure("job_failed_1")
    return b


def build_partial_root(root: str | Path, n: int = 40, num_classes: int = 5, seed: int = 1) -> RootBuilder:
    """A root where only the zoo, predictions and pair scores exist (no transfer has run yet)."""
    rng = np.random.default_rng(seed)
    b = RootBuilder(root, num_classes=num_classes)
    labels = np.arange(n) % num_classes
    for name, fam, params, acc in STUDENTS[:2] + TEACHERS[:3]:
        b.model(name, fam, params)
        b.predictions(name, labels, _model_preds(rng, labels, acc, num_classes))
    for s, *_ in STUDENTS[:2]:
        for t, *_ in TEACHERS[:3]:
            b.score_pair(t, s)
    b.write_scores()
    return b


def add_related_methods(b: RootBuilder, n: int = 80) -> None:
    """Mixup-KD transfers (Std-KD with none / PMU 10% / FMU, a scratch KL), an AMTML-KD run with its
    per-class teacher weights, and robustness rows for the student before and after: the report's
    related-methods tables and figure get data."""
    from zoo_study.store import ROBUSTNESS_SCHEMA
    from zoo_study.transfer.amtml import TEACHER_WEIGHT_SCHEMA

    jobs = []
    for mixup, share, g, l in (("none", 0.0, 6, 2), ("pmu", 0.1, 7, 2), ("fmu", 1.0, 4, 3)):
        jobs.append(b.transfer("vit_s", "t_strong", "std_kd", (g - l) / n, mixup=mixup, mixup_share=share, n_eval=n,
                               n_gain=g, n_loss=l))
    b.transfer("vit_s", "t_strong", "kl", 32 / n, student_init="scratch", acc_before=0.2, n_eval=n, n_gain=34, n_loss=2)
    amtml = b.transfer("vit_s", ["t_weak", "t_strong"], "amtml_kd", 2 / n, mode="parallel", study_part="multi_teacher",
                       n_eval=n, n_gain=3, n_loss=1)
    rows = [{"job_id": amtml, "stage": 0, "class_id": c, "teacher": t, "weight": w}
            for c in range(b.num_classes) for t, w in (("t_weak", 0.2 + 0.1 * (c % 2)), ("t_strong", 0.8 - 0.1 * (c % 2)))]
    write_parquet_atomic(table_from_rows(rows, TEACHER_WEIGHT_SCHEMA), b.layout.path("teacher_weights", job_id=amtml))
    for i, tid in enumerate([None, *jobs]):
        rid = f"rob{i}"
        rr = [{"job_id": rid, "model_id": "vit_s", "transfer_id": tid, "eps": e, "ifgsm_steps": 10, "n": n,
               "clean_acc": 0.7 + 0.01 * i, "fgsm_acc": 0.5 - e, "ifgsm_acc": 0.4 - e, "v_measure": 0.6, "v_chance": 0.3, "ami": 0.4,
               "runtime_s": 1.0, "device": "cpu"} for e in (2 / 255, 8 / 255)]
        write_parquet_atomic(table_from_rows(rr, ROBUSTNESS_SCHEMA), b.layout.robustness_row(rid))


def add_cross_domain(b: RootBuilder, n: int = 80) -> None:
    """A teacher adapted on another domain (its catalog row says so, as zoo.cross_domain writes it), scored
    against vit_s, with a KL-Dist and a KL+DP transfer: Fig 10 gets data (Fig 9 reads the same rows)."""
    rng = np.random.default_rng(7)
    labels = np.arange(n) % b.num_classes
    b.model("t_sketch", "cnn", 5.0, source="embedded",
            recipe={"arch": "resnet10t", "adapted": {"from": "t_weak", "dataset": "generated[domain=sketch]",
                                                     "new_head": False}})
    b.predictions("t_sketch", labels, _model_preds(rng, labels, 0.45, b.num_classes))
    b.score_pair("t_sketch", "vit_s")
    b.write_scores()
    b.write_semantics()
    b.transfer("vit_s", "t_sketch", "kl", -10 / n, n_eval=n, n_gain=2, n_loss=12)
    b.transfer("vit_s", "t_sketch", "kl_dp", 0.0, n_eval=n, n_gain=3, n_loss=3)
