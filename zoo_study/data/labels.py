"""The study's classes when they are a subset of a larger label space (some ImageNet classes).

Why: an ImageFolder root with WordNet-id folders keeps ImageNet's label ids (pretrained 1000-way
classifiers are scored in their own label space), so a study of 10 classes may have labels up to 900.
Counting classes as ``max(label) + 1`` then gives 901, and every "uniform over the classes" reference
(Fig 1b's ``ln(num_classes)``) is wrong. The score stage instead counts the classes present in the eval
split (the only classes a flip can fall in): it scores on dense positions 0..K-1 and maps class ids back,
so per-class tables keep the dataset's ids (they join predictions' labels and class names).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

__all__ = ["present_classes", "to_dense", "class_ids_back"]


def present_classes(predictions: Mapping[str, pa.Table]) -> np.ndarray:
    """The sorted distinct labels of the prediction tables (every table scores the same eval split)."""
    labels = [t.column("label").to_numpy() for t in predictions.values()]
    return np.unique(np.concatenate(labels)) if labels else np.zeros(0, dtype=np.int64)


def to_dense(predictions: Mapping[str, pa.Table], classes: np.ndarray) -> dict[str, pa.Table]:
    """Each table with ``label`` and ``pred`` as positions in ``classes``; a prediction outside them is
    -1 (never a label), so ``pred == label`` is unchanged for every sample."""
    classes = np.asarray(classes, dtype=np.int64)
    out = {}
    for mid, t in predictions.items():
        cols = {}
        for name in ("label", "pred"):
            v = t.column(name).to_numpy().astype(np.int64)
            pos = np.searchsorted(classes, v)
            hit = (pos < len(classes)) & (classes[np.minimum(pos, len(classes) - 1)] == v)
            if name == "label" and not hit.all():
                raise ValueError(f"predictions of {mid!r} have labels outside the study's classes")
            cols[name] = pa.array(np.where(hit, pos, -1).astype(np.int32))
        for name, arr in cols.items():
            t = t.set_column(t.schema.get_field_index(name), t.schema.field(name), arr)
        out[mid] = t
    return out


def class_ids_back(table: pa.Table, classes: np.ndarray, column: str = "class_id") -> pa.Table:
    """A per-class table scored on dense positions with its ``column`` mapped back to the dataset's ids."""
    i = table.schema.get_field_index(column)
    pos = table.column(column).to_numpy()
    ids = np.asarray(classes, dtype=np.int64)[pos].astype(np.int32)
    return table.set_column(i, table.schema.field(column), pa.array(ids))

