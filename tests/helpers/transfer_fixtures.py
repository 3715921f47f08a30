"""Shared tiny models and data for the transfer tests (imported by test_transfer*.py,
test_multi_teacher.py; cached per process so the models are trained once per pytest run).

The models are timm resnet10t with channels (8, 16, 32, 64) on a 6-class generated dataset at 16 px,
trained for a few dozen Adam steps: good enough to be well above chance and to disagree with each
other, fast enough for a 2-core CI machine.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F

import zoo_study  # noqa: F401
import timm

from zoo_study.data import GeneratedSpec, ModelPreprocess, make_generated, raw_loader
from zoo_study.zoo.catalog import CatalogRecord

NUM_CLASSES = 6


@lru_cache(maxsize=1)
def tiny_source():
    return make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=3, n_train=300, n_eval=120,
                                        image_size=16))


def record(model_id: str, size: int = 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> CatalogRecord:
    return CatalogRecord(model_id=model_id, source="embedded", arch="resnet10t", family="cnn", params_m=0.1,
                         num_classes=NUM_CLASSES, input_size=[3, size, size], crop_pct=1.0,
                         interpolation="bilinear", mean=list(mean), std=list(std))


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=NUM_CLASSES, channels=(8, 16, 32, 64)).eval()


@lru_cache(maxsize=None)
def _trained(seed: int, steps: int, size: int) -> tuple[dict, CatalogRecord]:
    torch.set_num_threads(1)
    src = tiny_source()
    rec = record(f"tiny{seed}_{size}px", size)
    model = tiny_model(seed)
    pre = ModelPreprocess.from_data_config(rec.data_config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    step = 0
    while step < steps:
        for raw, labels, _ in raw_loader(src.train, 32, shuffle=True, seed=seed + step, drop_last=True):
            loss = F.cross_entropy(model(pre(raw)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    return copy.deepcopy(model.state_dict()), rec


def trained(seed: int = 0, steps: int = 40, size: int = 16) -> tuple[torch.nn.Module, CatalogRecord]:
    """A fresh module (safe to mutate) with cached trained weights, and its record."""
    state, rec = _trained(seed, steps, size)
    model = tiny_model(seed)
    model.load_state_dict(state)
    return model.eval(), rec


def state_equal(a: torch.nn.Module, b: torch.nn.Module, floating_only: bool = False) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(torch.equal(sa[k], sb[k]) for k in sa if not floating_only or sa[k].is_floating_point())
