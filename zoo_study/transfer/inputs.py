"""What a transfer job checks and prepares before training: its transfer set, the teachers' order,
cached eval predictions aligned to the eval split, and the versions recorded with every result."""

from __future__ import annotations

import platform
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

import zoo_study
from zoo_study.data.base import DataSource, ImageSplit
from zoo_study.data.subsets import stratified_indices
from zoo_study.transfer.config import TransferConfig

__all__ = ["versions", "transfer_set", "order_teachers"]


def versions() -> dict[str, str]:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "zoo_study": zoo_study.__version__}


def transfer_set(source: DataSource, config: TransferConfig) -> ImageSplit:
    """The stratified transfer set of the train split, drawn with ``subset_seed``: ``transfer_per_class``
    samples of every class when set (the paper: 130 per ImageNet class), else ``transfer_fraction`` of
    each class."""
    if config.transfer_per_class is not None:
        idx = stratified_indices(source.train.labels, per_class=config.transfer_per_class, seed=config.subset_seed)
        return source.train.subset(idx, name=f"{source.train.name}[transfer {config.transfer_per_class}/class]")
    idx = stratified_indices(source.train.labels, fraction=config.transfer_fraction, seed=config.subset_seed)
    return source.train.subset(idx, name=f"{source.train.name}[transfer {config.transfer_fraction:g}]")


def order_teachers(accuracies: Sequence[float], order: str) -> list[int]:
    """Indices of the teachers in phase order; ties keep the given order (stable sort)."""
    idx = list(range(len(accuracies)))
    if order == "given":
        return idx
    if order == "ascending":
        return sorted(idx, key=lambda i: accuracies[i])
    if order == "descending":
        return sorted(idx, key=lambda i: -accuracies[i])
    raise ValueError(f"unknown teacher order {order!r}; valid: given, ascending, descending")


def _aligned_pred(cached: Any, split: ImageSplit, model_id: str) -> np.ndarray:
    if isinstance(cached, pa.Table):
        for col in ("sample_id", "pred"):
            if col not in cached.column_names:
                raise ValueError(f"cached predictions of {model_id!r} lack column {col!r}")
        lookup = dict(zip(cached.column("sample_id").to_pylist(), cached.column("pred").to_pylist()))
        missing = [int(s) for s in split.sample_ids if int(s) not in lookup]
        if missing:
            raise ValueError(f"cached predictions of {model_id!r} miss {len(missing)} eval samples (first id {missing[0]})")
        return np.asarray([lookup[int(s)] for s in split.sample_ids], dtype=np.int64)
    arr = np.asarray(cached, dtype=np.int64)
    if arr.shape != (len(split),):
        raise ValueError(f"cached predictions of {model_id!r} have shape {arr.shape}; expected ({len(split)},)")
    return arr


def _check_inputs(student_record, teachers, source: DataSource, config: TransferConfig, job_id: str) -> None:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    if not teachers:
        raise ValueError("run_transfer needs at least one (teacher module, record) pair")
    if config.mode == "single" and len(teachers) != 1:
        raise ValueError(f"mode 'single' takes exactly one teacher, got {len(teachers)}; "
                         f"use mode sequential, parallel or soup for several")
    for i, pair in enumerate(teachers):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], nn.Module)):
            raise TypeError(f"teachers[{i}] must be a (nn.Module, CatalogRecord) pair, got {type(pair).__name__}")
    c = source.num_classes
    for rec in [student_record] + [r for _, r in teachers]:
        if rec.num_classes != c:
            raise ValueError(f"model {rec.model_id!r} predicts {rec.num_classes} classes but the data source "
                             f"{source.name!r} has {c}; transfer needs a shared label space")


