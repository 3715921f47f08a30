"""One model over one split -> the per-sample prediction table (PREDICTION_SCHEMA).

Predictions are computed once per model and cached as Parquet; every pair is scored from them, so no
pair ever re-runs two models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.layout import channels_last_pass, pass_input
from zoo_study.precision import choose_precision, enable_fast_kernels, fp32_logits
from zoo_study.store import PREDICTION_SCHEMA

try:  # tqdm is a dependency; keep the library importable without it anyway
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``: pinned and non-blocking on CUDA, a plain ``to`` elsewhere."""
    if device.type != "cuda":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def _batches(model: nn.Module, split: ImageSplit, preprocess: ModelPreprocess, batch_size: int,
             device: torch.device, progress: bool, desc: str):
    """(fp32 logits on the device, labels, sample ids) per batch: eval mode, channels_last (on CPU for
    this pass only, zoo_study.layout), autocast as :func:`~zoo_study.precision.choose_precision` says on a
    GPU with the head in fp32."""
    precision = choose_precision(device)
    if precision.fast_kernels:
        enable_fast_kernels()
    model.eval().to(device)
    loader = raw_loader(split, batch_size)
    it = tqdm(loader, desc=desc, leave=False, disable=not progress) if tqdm else loader
    layout = contextlib.nullcontext(True) if device.type == "cuda" else channels_last_pass([model])
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    with layout as cl:
        for raw, y, sid in it:
            x = pass_input(preprocess(_to_device(raw, device)), cl)
            yield fp32_logits(model, x, precision), y, sid


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    split: ImageSplit,
    preprocess: ModelPreprocess,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "predict",
    on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model`` over ``split``: (sample_ids, labels, float32 probabilities [n, C]), the full matrix
    on the host (:func:`predict` keeps only the top-k and copies [B, k] per batch)."""
    device = torch.device(device)
    ids, labels, probs = [], [], []
    for logits, y, sid in _batches(model, split, preprocess, batch_size, device, progress, desc):
        p = torch.softmax(logits, dim=1)
        if on_batch is not None:
            on_batch(logits, y, sid)
        ids.append(sid.numpy())
        labels.append(y.numpy())
        probs.append(p.cpu().numpy())
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(probs).astype(np.float32)


@dataclass
class TopPredictions:
    """Per sample: the k most probable classes (descending, ties to the lower class index), their
    probabilities and the label's probability; float32 probabilities of fp32 logits."""

    sample_ids: np.ndarray
    labels: np.ndarray
    top: np.ndarray  # int [n, k]
    p_top: np.ndarray  # float32 [n, k]
    p_label: np.ndarray  # float32 [n]


def _check_labels(y: torch.Tensor, c: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise ValueError(f"labels must be in [0, {c}); the model predicts {c} classes but a label is {bad}")


@torch.no_grad()
def predict_top(model: nn.Module, split: ImageSplit, preprocess: ModelPreprocess, *, k: int = 5,
                batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = False,
                desc: str = "predict") -> TopPredictions:
    """The top-``k`` classes of ``model`` on ``split``, computed on the device: softmax of fp32 logits,
    a stable descending sort (the order of ``np.argsort(-p, kind="stable")``), and only [B, k] indices,
    [B, k] probabilities and the [B] label probabilities copied to the host per batch."""
    device = torch.device(device)
    ids, labels, tops, p_tops, p_labels = [], [], [], [], []
    for logits, y, sid in _batches(model, split, preprocess, batch_size, device, progress, desc):
        c = logits.shape[1]
        _check_labels(y, c)  # y is the loader's host tensor: no device read
        p = torch.softmax(logits, dim=1)
        vals, idx = torch.sort(p, dim=1, descending=True, stable=True)
        kk = min(max(int(k), 1), c)
        p_label = p.gather(1, _to_device(y, device).view(-1, 1)).squeeze(1)
        ids.append(sid.numpy())
        labels.append(y.numpy())
        tops.append(idx[:, :kk].cpu().numpy())
        p_tops.append(vals[:, :kk].cpu().numpy())
        p_labels.append(p_label.cpu().numpy())
    return TopPredictions(np.concatenate(ids), np.concatenate(labels), np.concatenate(tops),
                          np.concatenate(p_tops).astype(np.float32), np.concatenate(p_labels).astype(np.float32))


def _table(model_id: str, sample_ids: np.ndarray, labels: np.ndarray, pred: np.ndarray, p_label: np.ndarray,
           p_max: np.ndarray, top: np.ndarray | None) -> pa.Table:
    """The PREDICTION_SCHEMA table from per-sample columns (``top`` None: no top-k column)."""
    n = len(sample_ids)
    columns = {
        "model_id": pa.array([model_id] * n, pa.string()),
        "sample_id": pa.array(sample_ids.astype(np.int64)),
        "label": pa.array(labels.astype(np.int32)),
        "pred": pa.array(pred.astype(np.int32)),
        "p_label": pa.array(p_label.astype(np.float32)),
        "p_max": pa.array(p_max.astype(np.float32)),
    }
    if top is not None:
        k = top.shape[1]
        columns["topk"] = pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                                   pa.array(top.astype(np.int32).ravel()))
    else:
        columns["topk"] = pa.nulls(n, pa.list_(pa.int32()))
    return pa.table(columns, schema=PREDICTION_SCHEMA)


def prediction_table(model_id: str, sample_ids: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     topk: int = 5) -> pa.Table:
    """The PREDICTION_SCHEMA table for a probability matrix (top-k kept when topk > 0)."""
    n, c = probs.shape
    if not (len(sample_ids) == len(labels) == n):
        raise ValueError("sample_ids, labels and probs must have the same number of rows")
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"labels must be in [0, {c}); the model predicts {c} classes but a label is {bad}")
    pred = probs.argmax(axis=1).astype(np.int32)
    rows = np.arange(n)
    top = None
    if topk > 0:
        top = np.argsort(-probs, axis=1, kind="stable")[:, :min(topk, c)]
    return _table(model_id, sample_ids, labels, pred, probs[rows, labels], probs[rows, pred], top)


def predict(
    model: nn.Module,
    split: ImageSplit,
    preprocess: ModelPreprocess,
    *,
    model_id: str,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    topk: int = 5,
    progress: bool = False,
) -> pa.Table:
    """Predictions of ``model`` on ``split`` as a PREDICTION_SCHEMA table, one row per sample: the top-k
    on the device (:func:`predict_top`), equal to :func:`prediction_table` of the full probabilities."""
    res = predict_top(model, split, preprocess, k=topk, batch_size=batch_size, device=device, progress=progress,
                      desc=f"predict {model_id}")
    return _table(model_id, res.sample_ids, res.labels, res.top[:, 0], res.p_label, res.p_top[:, 0],
                  res.top if topk > 0 else None)


def accuracy(table: pa.Table) -> float:
    """Top-1 accuracy (fraction) from a prediction table."""
    if table.num_rows == 0:
        raise ValueError("accuracy of an empty prediction table is undefined")
    label = table.column("label").to_numpy()
    pred = table.column("pred").to_numpy()
    return float(np.mean(label == pred))
