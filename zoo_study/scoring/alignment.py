"""Per-model prediction tables -> one aligned N x n correctness matrix.

Why a module of its own: every pair score is derived from the boolean matrix "model m got sample i
right", so the cached predictions of all models are aligned once, by sample id, and scoring never
looks at the tables again. Why strict: a pair score is only meaningful when both models were evaluated
on the same samples with the same labels; a silently dropped or relabelled sample would bias rho for
every pair that involves the model, so differing sample sets or labels raise, naming both models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pyarrow as pa

from zoo_study.scoring.pairs import _check_model_ids

_PREDICTION_COLUMNS = ("sample_id", "label", "pred")


@dataclass(frozen=True, eq=False)
class AlignedPredictions:
    """The predictions of N models on the same n samples, as one correctness matrix.

    ``model_ids`` is sorted; ``correct[m, i]`` says whether model ``model_ids[m]`` got sample
    ``sample_ids[i]`` right; samples are sorted by id.
    """

    model_ids: tuple[str, ...]
    sample_ids: np.ndarray  # (n,) int64, sorted
    labels: np.ndarray  # (n,) int64
    correct: np.ndarray  # (N, n) bool
    num_classes: int
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {m: i for i, m in enumerate(self.model_ids)})

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.shape[0])


def _column_numpy(table: pa.Table, name: str, model_id: str) -> np.ndarray:
    if name not in table.column_names:
        raise ValueError(
            f"predictions of {model_id!r} lack column {name!r}; have {table.column_names}, need {list(_PREDICTION_COLUMNS)}"
        )
    col = table.column(name)
    if not pa.types.is_integer(col.type):
        raise ValueError(f"predictions of {model_id!r}: column {name!r} must be integer, got {col.type}")
    if col.null_count:
        raise ValueError(f"predictions of {model_id!r} have {col.null_count} null values in column {name!r}")
    return np.asarray(col.to_numpy())


def _describe_sample_difference(a_id: str, a: np.ndarray, b_id: str, b: np.ndarray) -> str:
    only_a = np.setdiff1d(a, b)
    only_b = np.setdiff1d(b, a)
    parts = [f"{a_id!r} has {a.size} samples, {b_id!r} has {b.size}"]
    if only_a.size:
        parts.append(f"{only_a.size} sample ids only in {a_id!r} (first: {int(only_a[0])})")
    if only_b.size:
        parts.append(f"{only_b.size} sample ids only in {b_id!r} (first: {int(only_b[0])})")
    return f"predictions of {a_id!r} and {b_id!r} cover different samples: " + "; ".join(parts)


def align_predictions(predictions: Mapping[str, pa.Table], num_classes: int | None = None) -> AlignedPredictions:
    """Align per-model prediction tables (PREDICTION_SCHEMA; sample_id, label, pred used) by sample id.

    Why strict: a pair score is only meaningful when both models were evaluated on the same samples
    with the same labels; a silently dropped or relabelled sample would bias rho for every pair that
    involves the model. So differing sample sets or labels raise, naming both models.

    ``num_classes`` defaults to ``max(label) + 1``; pass the dataset's class count when some classes
    may be absent from the evaluation split.
    """
    if not predictions:
        raise ValueError("no prediction tables given")
    model_ids = _check_model_ids(predictions.keys())
    ref_id = model_ids[0]
    ref_raw: np.ndarray | None = None  # the reference's sample ids in its own row order
    ref_order: np.ndarray | None = None
    ref_ids: np.ndarray | None = None  # sorted
    ref_labels: np.ndarray | None = None
    correct_rows: list[np.ndarray] = []
    for mid in model_ids:
        table = predictions[mid]
        if not isinstance(table, pa.Table):
            raise TypeError(f"predictions of {mid!r} must be a pyarrow.Table, got {type(table).__name__}")
        raw = _column_numpy(table, "sample_id", mid)
        label = _column_numpy(table, "label", mid)
        pred = _column_numpy(table, "pred", mid)
        if ref_raw is not None and raw.size == ref_raw.size and np.array_equal(raw, ref_raw):
            # same rows in the same order as the reference (the usual case: one data loader wrote
            # every table), so the reference's sort order and duplicate check apply as they are
            order, sid = ref_order, ref_ids
        elif raw.size < 2 or bool(np.all(raw[1:] > raw[:-1])):
            order, sid = None, raw  # already sorted and unique
        else:
            order = np.argsort(raw)  # ties are errors below, so stability does not matter
            sid = raw[order]
            dup = sid[1:] == sid[:-1]
            if dup.any():
                raise ValueError(
                    f"predictions of {mid!r} repeat sample ids: {int(dup.sum())} duplicates "
                    f"(first: {int(sid[1:][dup][0])})"
                )
        if order is not None:
            label, pred = label[order], pred[order]
        if ref_ids is None:
            if sid.size == 0:
                raise ValueError(f"predictions of {mid!r} are empty: nothing to score")
            ref_raw, ref_order, ref_ids, ref_labels = raw, order, sid, label
        else:
            assert ref_labels is not None
            if sid is not ref_ids and (sid.size != ref_ids.size or not np.array_equal(sid, ref_ids)):
                raise ValueError(_describe_sample_difference(ref_id, ref_ids, mid, sid))
            diff = label != ref_labels
            if diff.any():
                j = int(np.argmax(diff))
                raise ValueError(
                    f"predictions of {ref_id!r} and {mid!r} disagree on labels for {int(diff.sum())} of "
                    f"{sid.size} samples; first at sample id {int(sid[j])}: label {int(ref_labels[j])} "
                    f"vs {int(label[j])}"
                )
        correct_rows.append(pred == label)
    assert ref_ids is not None and ref_labels is not None
    if ref_labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(ref_labels.min())} in predictions of {ref_id!r}")
    max_label = int(ref_labels.max())
    if num_classes is None:
        num_classes = max_label + 1
    elif num_classes <= max_label:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {max_label}")
    return AlignedPredictions(
        model_ids=tuple(model_ids),
        sample_ids=ref_ids.astype(np.int64, copy=False),
        labels=ref_labels.astype(np.int64, copy=False),
        correct=np.stack(correct_rows),
        num_classes=int(num_classes),
    )


__all__ = ["AlignedPredictions", "align_predictions"]
