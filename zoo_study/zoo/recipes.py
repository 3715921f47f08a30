"""Recipes of the embedded zoo: small timm models that the default study trains itself.

Why so varied: complementary knowledge comes from differences in architecture, width, input
resolution, training length, augmentation, label smoothing, mixup and seed. The recipes spread over all
three families (CNN, Transformer, MLP) and over those choices so the trained models disagree in
structured ways, like real pretrained zoos do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Recipe:
    model_id: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 32
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    epochs: float = 3.0
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    augment: str = "flip_crop"  # none | flip | flip_crop
    train_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in ("none", "flip", "flip_crop"):
            raise ValueError(f"recipe {self.model_id}: augment {self.augment!r}; valid: none, flip, flip_crop")
        if self.epochs <= 0:
            raise ValueError(f"recipe {self.model_id}: epochs must be > 0, got {self.epochs}")
        if not (0 < self.train_fraction <= 1):
            raise ValueError(f"recipe {self.model_id}: train_fraction must be in (0, 1], got {self.train_fraction}")

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": [3, self.input_size, self.input_size],
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def model_kwargs_for(self, num_classes: int) -> dict[str, Any]:
        kw = dict(self.model_kwargs)
        kw["num_classes"] = num_classes
        return kw

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        for key, val in list(d.get("model_kwargs", {}).items()):
            if isinstance(val, list):
                d["model_kwargs"][key] = tuple(val)
        return cls(**d)


_R = (16, 32, 64, 128)
_CONVNEXT = {"dims": (24, 48, 96, 192), "depths": (1, 1, 2, 1), "patch_size": 2}
# Epochs and learning rates were tuned so that, on the demo's data (12k training images, difficulty 0.4),
# every model lands between roughly 50% and 90% eval accuracy in well under a minute of one CPU core.
EMBEDDED_RECIPES: tuple[Recipe, ...] = (
    # CNNs
    Recipe("resnet10t_w16", "resnet10t", {"channels": _R}, epochs=3, seed=0),
    Recipe("resnet10t_w24_ls", "resnet10t", {"channels": (24, 48, 96, 192)}, input_size=28, epochs=2,
           label_smoothing=0.1, seed=1),
    Recipe("resnet18_w16_short", "resnet18", {"channels": _R}, epochs=2, lr=3e-3, augment="flip", seed=2),
    Recipe("convnext_atto_p2", "convnext_atto", _CONVNEXT, epochs=3, lr=4e-3, mean=HALF, std=HALF, seed=3),
    Recipe("convnext_atto_p2_mixup", "convnext_atto", _CONVNEXT, epochs=4, lr=4e-3, mixup_alpha=0.4, seed=4),
    # Transformers
    Recipe("vit_p8_d96", "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 3,
           "num_heads": 3}, epochs=6, lr=2e-3, mean=HALF, std=HALF, seed=5),
    Recipe("vit_p4_d64_28px", "vit_tiny_patch16_224", {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 3,
           "num_heads": 2}, input_size=28, epochs=4, lr=3e-3, seed=6),
    Recipe("pit_p8", "pit_ti_224", {"img_size": 32, "patch_size": 8, "stride": 4, "base_dims": (24, 24),
           "depth": (2, 2), "heads": (2, 4)}, epochs=3, seed=7),
    Recipe("xcit_p8_d96", "xcit_nano_12_p8_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 3,
           "num_heads": 4}, epochs=2, label_smoothing=0.1, seed=8),
    # MLPs
    Recipe("mixer_p8", "zoo_mixer_p4", {"patch_size": 8, "num_blocks": 4, "embed_dim": 128}, epochs=4,
           mean=HALF, std=HALF, seed=9),
    Recipe("resmlp_p8_d128", "zoo_resmlp_p4", {"patch_size": 8, "num_blocks": 4, "embed_dim": 128}, epochs=6,
           lr=4e-3, augment="flip", seed=10),  # padded random crops cost this patch-8 MLP ~15 points
    Recipe("gmlp_p4_half_data", "zoo_gmlp_p4", {"num_blocks": 3, "embed_dim": 64}, epochs=6, lr=3e-3,
           train_fraction=0.5, augment="flip", seed=11),
)


# Optional recipes: trained only when a study names them (``zoo.embedded = ["all", "<id>", ...]``), so the
# demo's zoo (``"all"``) is unchanged. Each is a default recipe with mixup added and nothing else changed
# (same architecture, data config, epochs, lr and seed), so "the same teacher with and without mixup" is a
# controlled pair for the Mixup-KD comparison (METHOD.md section 5). ConvNeXt already has both variants
# in the default zoo, but ``convnext_atto_p2_mixup`` differs from ``convnext_atto_p2`` in more than mixup
# (one more epoch, ImageNet normalisation, another seed).
MIXUP_ALPHA = 0.4
OPTIONAL_RECIPES: tuple[Recipe, ...] = tuple(
    replace(recipe, model_id=f"{recipe.model_id}_mixup", mixup_alpha=MIXUP_ALPHA)
    for recipe in EMBEDDED_RECIPES if recipe.model_id in ("resnet10t_w24_ls", "mixer_p8")
)
ALL_RECIPES: tuple[Recipe, ...] = EMBEDDED_RECIPES + OPTIONAL_RECIPES


def recipe_by_id(model_id: str) -> Recipe:
    for r in ALL_RECIPES:
        if r.model_id == model_id:
            return r
    raise KeyError(f"no embedded recipe {model_id!r}; known: {', '.join(r.model_id for r in ALL_RECIPES)}")


def select_recipes(embedded: str | list[str]) -> list[Recipe]:
    """The recipes a ``zoo.embedded`` value names: ``"all"`` (the default zoo), ``"none"``, or a list of
    recipe ids in which ``"all"`` stands for every default recipe (so ``["all", "mixer_p8_mixup"]`` is the
    default zoo plus one optional recipe). Order: the listed order, "all" expanded in place, no repeats."""
    if embedded == "all":
        return list(EMBEDDED_RECIPES)
    if embedded == "none":
        return []
    out: list[Recipe] = []
    for name in embedded:
        for r in (EMBEDDED_RECIPES if name == "all" else (recipe_by_id(name),)):
            if r not in out:
                out.append(r)
    return out
