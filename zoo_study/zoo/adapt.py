"""Adapt a trained model to other data: a new head for other classes, then fine-tuning or a linear probe.

Why: Fig 9 asks whether transfer works on datasets other than the one the zoo was trained on (the paper:
ImageNet models adapted to CUB200, Caltech256, Stanford Cars); Fig 10 asks whether a teacher trained on
another domain can still teach. Both need models that learned one dataset and were then moved to
another. :func:`replace_head` swaps only the classifier (timm's ``reset_classifier``: the backbone's
weights are untouched, tests/test_adapt.py checks it for a CNN and a ViT); :func:`adapt_model` trains
on the new data (``finetune``: every weight; ``linear_probe``: the classifier only, the backbone frozen
and kept in eval mode so its BatchNorm statistics stay as trained) with AdamW and a one-cycle
schedule, flips as augmentation, and returns safetensors bytes with the metadata that
:func:`zoo_study.zoo.loading.load_model` reads (architecture, kwargs, data config, classes) plus what
the model was adapted from and on.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo_study.data.base import DataSource, raw_loader
from zoo_study.data.cache import cached_split
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.zoo.loading import RECIPE_METADATA_KEY

__all__ = ["replace_head", "adapt_model", "MODES"]

MODES = ("finetune", "linear_probe")


def replace_head(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """A fresh classifier for ``num_classes`` (seeded), everything else as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model.reset_classifier(num_classes)
    return model


def _head_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = model.get_classifier()
    params = list(head.parameters()) if isinstance(head, nn.Module) else []
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable classifier to probe")
    return params


def adapt_model(model: nn.Module, data_config: Mapping[str, Any], source: DataSource, settings: Mapping[str, Any], *,
                meta: Mapping[str, Any], new_head: bool, device: str | torch.device = "cpu") -> tuple[bytes, dict]:
    """Train ``model`` on ``source.train`` (see the module docstring); returns (safetensors bytes, info).

    ``settings``: mode, epochs, lr, batch_size, seed (zoo_study.config.AdaptSettings). ``new_head``: replace
    the classifier first (needed when the class count differs; a same-class domain change keeps it).
    ``meta``: the checkpoint metadata to extend (arch, model_kwargs, data_config of the trained model).
    """
    from safetensors.torch import save as st_save

    mode = settings["mode"]
    if mode not in MODES:
        raise ValueError(f"adapt mode {mode!r}; valid: {', '.join(MODES)}")
    t0 = time.perf_counter()
    seed = int(settings["seed"])
    num_classes = source.num_classes
    if new_head:
        replace_head(model, num_classes, seed)
    model = model.to(device)
    if mode == "linear_probe":
        for p in model.parameters():
            p.requires_grad_(False)
        params = _head_parameters(model)
        for p in params:
            p.requires_grad_(True)
    else:
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
    split = cached_split(source.train)  # the image cache when configured (on_bad_image applies), as in train.py
    batch = min(int(settings["batch_size"]), len(split))
    loader = raw_loader(split, batch, shuffle=True, seed=seed, drop_last=True)
    total = max(1, int(math.ceil(float(settings["epochs"]) * max(1, len(loader)))))
    opt = torch.optim.AdamW(params, lr=float(settings["lr"]), weight_decay=0.05 if mode == "finetune" else 0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(settings["lr"]), total_steps=total, pct_start=0.15)
    pre = ModelPreprocess.from_data_config(dict(data_config))
    gen = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    while step < total:
        model.train(mode == "finetune")  # a probe keeps the backbone's normalisation statistics as trained
        for raw, labels, _ in loader:
            if step >= total:
                break
            flip = torch.rand(raw.shape[0], generator=gen) < 0.5
            raw = torch.where(flip.view(-1, 1, 1, 1), raw.flip(-1), raw)
            loss = F.cross_entropy(model(pre(raw.to(device))), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
    model.eval()
    seconds = time.perf_counter() - t0
    info = {"adapt_seconds": seconds, "steps": total, "final_loss": float(np.mean(losses[-20:]))}
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs["num_classes"] = num_classes
    out_meta = {**meta, "model_kwargs": kwargs, "num_classes": num_classes,
                "train_seconds": float(meta.get("train_seconds") or 0.0) + seconds}
    out_meta["adapted"] = {**dict(meta.get("adapted_info") or {}), "settings": dict(settings), "new_head": new_head,
                           "steps": total}
    out_meta.pop("adapted_info", None)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return st_save(state, metadata={RECIPE_METADATA_KEY: json.dumps(out_meta, sort_keys=True)}), info
