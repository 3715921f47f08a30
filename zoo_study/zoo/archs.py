"""Small-input MLP architectures registered with timm, for the embedded zoo.

Why: timm's MLP-Mixer / ResMLP / gMLP entry points fix ``patch_size=16``, which leaves a 32x32 image
with 4 tokens. These entry points build the same timm classes (``MlpMixer`` with its own blocks) with 4x4
patches, and register a pretrained config so they load through ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` like every other model.
"""

from __future__ import annotations

import zoo_study  # noqa: F401  (torchvision compat before timm)
from timm.layers import GatedMlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock, checkpoint_filter_fn


def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"zoo_mixer_p4.untrained": _cfg(), "zoo_resmlp_p4.untrained": _cfg(), "zoo_gmlp_p4.untrained": _cfg()}
)


def _build(variant: str, pretrained: bool, defaults: dict, kwargs: dict) -> MlpMixer:
    args = {**defaults, **kwargs}
    return build_model_with_cfg(MlpMixer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)


@register_model
def zoo_mixer_p4(pretrained: bool = False, **kwargs) -> MlpMixer:
    """MLP-Mixer with 4x4 patches for 32x32 inputs."""
    return _build("zoo_mixer_p4", pretrained, dict(img_size=32, patch_size=4, num_blocks=4, embed_dim=128), kwargs)


@register_model
def zoo_resmlp_p4(pretrained: bool = False, **kwargs) -> MlpMixer:
    """ResMLP with 4x4 patches for 32x32 inputs."""
    defaults = dict(img_size=32, patch_size=4, num_blocks=4, embed_dim=128, mlp_ratio=4, block_layer=ResBlock,
                    norm_layer=Affine)
    return _build("zoo_resmlp_p4", pretrained, defaults, kwargs)


@register_model
def zoo_gmlp_p4(pretrained: bool = False, **kwargs) -> MlpMixer:
    """gMLP with 4x4 patches for 32x32 inputs."""
    defaults = dict(img_size=32, patch_size=4, num_blocks=4, embed_dim=96, mlp_ratio=4, block_layer=SpatialGatingBlock,
                    mlp_layer=GatedMlp)
    return _build("zoo_gmlp_p4", pretrained, defaults, kwargs)
