"""Train an embedded-zoo model from its recipe on a DataSource and save it as safetensors.

Short CPU budgets: AdamW with a one-cycle schedule converges in a few epochs. Augmentation runs on
whole raw uint8 batches (flip, padded random crop), then the model's own preprocessing; mixup and label
smoothing come from the recipe.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import zoo_study  # noqa: F401
import timm

from zoo_study.data.base import DataSource, ImageSplit, raw_loader
from zoo_study.data.cache import cached_split
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.data.subsets import stratified_indices
from zoo_study.zoo import archs as _archs  # noqa: F401
from zoo_study.zoo.loading import RECIPE_METADATA_KEY
from zoo_study.zoo.recipes import Recipe


def _augment(raw: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    if mode == "none":
        return raw
    b, _, h, w = raw.shape
    flip = torch.rand(b, generator=gen) < 0.5
    raw = torch.where(flip.view(b, 1, 1, 1), raw.flip(-1), raw)
    if mode == "flip_crop":
        pad = max(1, h // 8)
        padded = F.pad(raw, (pad, pad, pad, pad), mode="replicate") if raw.dtype.is_floating_point else F.pad(
            raw.float(), (pad, pad, pad, pad), mode="replicate").to(raw.dtype)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h))  # [b, h]
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w))  # [b, w]
        idx_r = rows.view(b, 1, h, 1).expand(b, 3, h, padded.shape[-1])
        tmp = padded.gather(2, idx_r)
        idx_c = cols.view(b, 1, 1, w).expand(b, 3, h, w)
        raw = tmp.gather(3, idx_c)
    return raw


def train_recipe(
    recipe: Recipe,
    source: DataSource,
    *,
    device: str | torch.device = "cpu",
    epochs_scale: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Train ``recipe`` on ``source.train``; return (safetensors bytes with metadata, info).

    ``epochs_scale`` shrinks training for smoke tests. The returned bytes load with
    :func:`zoo_study.zoo.loading.load_model` like any local checkpoint.
    """
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    num_classes = source.num_classes
    model = timm.create_model(recipe.arch, pretrained=False, **recipe.model_kwargs_for(num_classes)).to(device)
    pre = ModelPreprocess.from_data_config(recipe.data_config)
    split = _train_split(recipe, source)
    # drop_last keeps batch statistics steady, but with fewer samples than one batch it would yield no
    # batch at all and the step loop below would never end: cap the batch at the split size
    batch_size = min(recipe.batch_size, len(split))
    loader = raw_loader(split, batch_size, shuffle=True, seed=recipe.seed, drop_last=True)
    steps_per_epoch = max(1, len(loader))
    total_steps = max(1, int(math.ceil(recipe.epochs * epochs_scale * steps_per_epoch)))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps, pct_start=0.15)
    step, losses = 0, []
    model.train()
    while step < total_steps:
        epoch_start = step
        for raw, labels, _ in loader:
            if step >= total_steps:
                break
            x, y = _batch(recipe, pre, raw, labels, gen, step, num_classes, device)
            loss = torch.sum(-y * F.log_softmax(model(x), dim=1), dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
        if step == epoch_start:  # a loader without batches would otherwise loop here forever
            raise RuntimeError(f"recipe {recipe.model_id}: the training loader yielded no batch ({len(split)} samples, "
                               f"batch {batch_size})")
        if progress:
            progress(f"{recipe.model_id}: step {step}/{total_steps} loss {np.mean(losses[-steps_per_epoch:]):.3f}")
    model.eval()
    seconds = time.perf_counter() - t0
    info = {"train_seconds": seconds, "steps": total_steps, "final_loss": float(np.mean(losses[-20:]))}
    return _checkpoint_bytes(model, recipe, num_classes, epochs_scale, seconds), info


def _train_split(recipe: Recipe, source: DataSource) -> ImageSplit:
    """The recipe's training images: through the decoded-image cache when ``data.cache_dir`` is set (at
    the lazy path's raw size: the same pixels; every image checked once when it is built, and
    ``data.on_bad_image = 'skip'`` leaves unreadable ones out as every other stage does), subsampled per
    class to ``train_fraction``."""
    split = cached_split(source.train)
    if recipe.train_fraction < 1:
        split = split.subset(stratified_indices(split.labels, fraction=recipe.train_fraction, seed=recipe.seed))
    if len(split) == 0:
        raise ValueError(f"recipe {recipe.model_id}: the training split is empty")
    return split


def _batch(recipe: Recipe, pre: ModelPreprocess, raw: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
           step: int, num_classes: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: augmented, preprocessed inputs and soft targets (label smoothing, then mixup
    with a per-step beta draw), consuming ``gen`` in a fixed order so a recipe retrains bit-identically."""
    raw = _augment(raw, recipe.augment, gen)
    x = pre(raw.to(device))
    y = F.one_hot(labels.to(device), num_classes).float()
    if recipe.label_smoothing > 0:
        y = y * (1 - recipe.label_smoothing) + recipe.label_smoothing / num_classes
    if recipe.mixup_alpha > 0:
        lam = float(np.random.default_rng([recipe.seed, step]).beta(recipe.mixup_alpha, recipe.mixup_alpha))
        perm = torch.randperm(x.shape[0], generator=gen).to(device)
        x = lam * x + (1 - lam) * x[perm]
        y = lam * y + (1 - lam) * y[perm]
    return x, y


def _checkpoint_bytes(model: nn.Module, recipe: Recipe, num_classes: int, epochs_scale: float,
                      seconds: float) -> bytes:
    """Safetensors bytes of the trained weights, with the recipe as metadata (what ``load_model`` reads
    back: arch, kwargs, data config)."""
    from safetensors.torch import save as st_save

    meta = {
        "arch": recipe.arch,
        "model_kwargs": recipe.model_kwargs_for(num_classes),
        "data_config": recipe.data_config,
        "num_classes": num_classes,
        "recipe": json.loads(recipe.to_json()),
        "epochs_scale": epochs_scale,
        "train_seconds": seconds,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return st_save(state, metadata={RECIPE_METADATA_KEY: json.dumps(meta, sort_keys=True)})
