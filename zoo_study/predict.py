"""One model over one split -> the per-sample prediction table (PREDICTION_SCHEMA).

Predictions are computed once per model and cached as Parquet; every pair is scored from them, so no
pair ever re-runs two models.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.layout import channels_last_pass, pass_input
from zoo_study.store import PREDICTION_SCHEMA

try:  # tqdm is a dependency; keep the library importable without it anyway
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    """Run ``model`` over ``split``: (sample_ids, labels, float32 probabilities [n, C]).

    Batched, eval mode, no_grad; channels_last (on CPU for the pass only) and bf16 autocast on a GPU.
    """
    device = torch.device(device)
    model.eval().to(device)
    ids, labels, probs = [], [], []
    loader = raw_loader(split, batch_size)
    it = tqdm(loader, desc=desc, leave=False, disable=not progress) if tqdm else loader
    # channels_last on a GPU for the whole run; on CPU for this pass only (zoo_study.layout)
    layout = contextlib.nullcontext(True) if device.type == "cuda" else channels_last_pass([model])
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    with layout as cl:
        for raw, y, sid in it:
            x = pass_input(preprocess(raw.to(device, non_blocking=True)), cl)
            with _autocast(device):
                logits = model(x)
            p = torch.softmax(logits.float(), dim=1)
            if on_batch is not None:
                on_batch(logits, y, sid)
            ids.append(sid.numpy())
            labels.append(y.numpy())
            probs.append(p.cpu().numpy())
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(probs).astype(np.float32)


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
    columns = {
        "model_id": pa.array([model_id] * n, pa.string()),
        "sample_id": pa.array(sample_ids.astype(np.int64)),
        "label": pa.array(labels.astype(np.int32)),
        "pred": pa.array(pred),
        "p_label": pa.array(probs[rows, labels].astype(np.float32)),
        "p_max": pa.array(probs[rows, pred].astype(np.float32)),
    }
    if topk > 0:
        k = min(topk, c)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int32)
        columns["topk"] = pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), pa.array(top.ravel()))
    else:
        columns["topk"] = pa.nulls(n, pa.list_(pa.int32()))
    return pa.table(columns, schema=PREDICTION_SCHEMA)


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
    """Predictions of ``model`` on ``split`` as a PREDICTION_SCHEMA table, one row per sample."""
    ids, labels, probs = predict_logits(model, split, preprocess, batch_size=batch_size, device=device,
                                        progress=progress, desc=f"predict {model_id}")
    return prediction_table(model_id, ids, labels, probs, topk=topk)


def accuracy(table: pa.Table) -> float:
    """Top-1 accuracy (fraction) from a prediction table."""
    if table.num_rows == 0:
        raise ValueError("accuracy of an empty prediction table is undefined")
    label = table.column("label").to_numpy()
    pred = table.column("pred").to_numpy()
    return float(np.mean(label == pred))
