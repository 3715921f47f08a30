"""The real-shape rehearsal's builders: tiny-width instances of real timm architectures with 1,000-class
heads, their local checkpoints, an ImageNet-style JPEG tree with the odd files real trees have, and the
study config that runs them through the pipeline.

Why: every other test uses embedded models at 16-32 px. The study's users run timm models at 224-256 px
with 1,000 classes on WordNet-id JPEG folders; the layouts those models really have (NHWC Swin maps,
distillation tokens, PiT's class tokens, Twins' and CoaT's stage modules, MobileViT's 256-px / 0.9-crop
geometry) only show up at those shapes. The widths here are tiny (seconds on 2 CPU cores); everything
else, including each model's own ``pretrained_cfg`` (input size, crop_pct, mean / std, interpolation), is
timm's. Nothing is downloaded.

Run by hand (a tree, checkpoints and a config a user can run; VOLO is registered by this module, so run
the CLI through it)::

    python -m tests.helpers.rehearsal make-tree rehearsal            # rehearsal/{imagenet,checkpoints}
    python -m tests.helpers.rehearsal zoo-study run pipelines/configs/rehearsal.toml
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
import torch
from timm.models import register_model

__all__ = ["ARCHS", "TinyArch", "WNIDS", "build_model", "write_checkpoints", "make_tree", "eval_files", "timm_probs",
           "zoo_entries",
           "study_toml", "main"]

# three ImageNet-1k classes (tench, goldfish, great white shark): labels 0, 1, 2 of 1,000
WNIDS = ("n01440764", "n01443537", "n01484850")


@register_model
def rehearsal_volo_d1_224(pretrained: bool = False, **kwargs: Any):
    """VOLO-D1's class, code path and pretrained config at a tiny width.

    Why registered: timm's ``volo_d1_224`` fixes ``layers`` / ``embed_dims`` / ``num_heads`` inside its entry
    point (``dict(layers=..., **kwargs)``), so they cannot be passed as ``model_kwargs``; this entry builds
    the same ``VOLO`` through timm's own ``_create_volo('volo_d1_224', ...)``, so the model carries
    volo_d1_224's pretrained_cfg (224 px, crop 0.96) and loads a local file like any timm model."""
    from timm.models.volo import _create_volo

    args = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 1, 1, 1))
    return _create_volo("volo_d1_224", pretrained=pretrained, **{**args, **kwargs})


@dataclass(frozen=True)
class TinyArch:
    """One rehearsal model: a zoo id, the timm arch, the width kwargs, and its checkpoint's format."""

    model_id: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    fmt: str = "safetensors"  # or "pth": torch.save({"state_dict": ...})
    family: str = "cnn"


ARCHS: tuple[TinyArch, ...] = (
    TinyArch("resnet", "resnet18", dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64])),
    TinyArch("convnext", "convnext_atto", dict(dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]), fmt="pth"),
    TinyArch("deit", "deit_tiny_distilled_patch16_224", dict(embed_dim=16, depth=2, num_heads=1), family="transformer"),
    TinyArch("swin", "swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]),
             family="transformer"),
    TinyArch("pit", "pit_xs_distilled_224", dict(base_dims=[8, 8, 8], depth=[1, 1, 1], heads=[1, 1, 1]), fmt="pth",
             family="transformer"),
    TinyArch("twins", "twins_svt_small", dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                               num_heads=[1, 1, 1, 1]), family="transformer"),
    TinyArch("coat", "coat_lite_mini", dict(embed_dims=[16, 16, 32, 32], serial_depths=[1, 1, 1, 1]),
             family="transformer"),
    TinyArch("volo", "rehearsal_volo_d1_224", {}, fmt="pth", family="transformer"),
    TinyArch("mobilevit", "mobilevit_xxs", {}),  # 256 px, crop 0.9: the non-224 / non-0.875 geometry
)
BY_ID = {a.model_id: a for a in ARCHS}


def build_model(spec: TinyArch, seed: int = 0) -> torch.nn.Module:
    """The random-init model with 1,000 classes, its classifier rows spread out (N(0, 1/fan_in)).

    Why re-draw the heads: several timm heads start at zero (ViT / DeiT), which makes every image predict
    class 0 and a comparison of predictions meaningless; spread logits depend on the input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(spec.arch, pretrained=False, num_classes=1000, **spec.kwargs)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.out_features == 1000:
                torch.nn.init.normal_(m.weight, std=3.0 / math.sqrt(m.in_features))
                if m.bias is not None:
                    torch.nn.init.normal_(m.bias, std=0.1)
    return model.eval()


def write_checkpoints(folder: Path, archs: tuple[TinyArch, ...] = ARCHS) -> dict[str, Path]:
    """Each model's checkpoint in ``folder``: safetensors, or a ``.pth`` holding ``{"state_dict": ...}``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, spec in enumerate(archs):
        state = {k: v.detach().contiguous().clone() for k, v in build_model(spec, seed=i).state_dict().items()}
        path = folder / f"{spec.model_id}.{spec.fmt}"
        if spec.fmt == "safetensors":
            save_file(state, str(path))
        else:
            torch.save({"state_dict": state, "epoch": 3}, path)
        out[spec.model_id] = path
    return out


def _picture(rng: np.random.Generator, size: tuple[int, int], hue: int) -> Image.Image:
    """A smooth random RGB picture (gradients + blobs) so resampling differences show in the pixels."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0), rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(fx * xx / w * 6.28 + ph) * np.cos(fy * yy / h * 6.28)
    img[..., hue % 3] += 40
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_tree(root: Path, n_train: int = 2, n_val: int = 2, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG`` for :data:`WNIDS`, with the odd files of real ImageNet:
    mixed sizes and aspect ratios, a grayscale JPEG, a CMYK JPEG and a PNG file named ``.JPEG``."""
    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (333, 500), (160, 120), (640, 427), (250, 250)]
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = _picture(rng, sizes[k % len(sizes)], c)
                name = folder / f"{wnid}_{split}_{i}.JPEG"
                kind = k % 4
                if kind == 1:
                    im.convert("L").save(name, "JPEG", quality=90)
                elif kind == 2:
                    im.convert("CMYK").save(name, "JPEG", quality=90)
                elif kind == 3:
                    im.save(name, "PNG")  # a PNG under a .JPEG name (ImageNet has a few)
                else:
                    im.save(name, "JPEG", quality=90)
                k += 1
    return root


def eval_files(tree: Path) -> list[str]:
    """The eval split's files in sample-id order, as the study's ImageFolder source indexes them."""
    from zoo_study.data import ImageFolderSpec, make_imagefolder

    return [str(f) for f in make_imagefolder(ImageFolderSpec(root=str(tree), raw_size=32)).eval.files]


def timm_probs(spec: TinyArch, checkpoint: Path, files: list[str]) -> np.ndarray:
    """timm's own eval on CPU in fp32: ``create_transform(**resolve_data_config(model=...))`` on each file
    (PIL, converted to RGB as timm's loader does) and a forward; softmax probabilities [N, 1000]."""
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(spec.arch, pretrained=False, num_classes=1000, **spec.kwargs)
    if str(checkpoint).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(checkpoint))
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    tf = create_transform(**resolve_data_config({}, model=model))
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        return model(x).softmax(-1).numpy()


def zoo_entries(checkpoints: dict[str, Path], archs: tuple[TinyArch, ...] = ARCHS) -> str:
    """The ``[[zoo.models]]`` entries (local checkpoints with their width kwargs)."""
    import json

    parts = []
    for spec in archs:
        kw = ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.kwargs.items())
        parts.append(f'[[zoo.models]]\nid = "{spec.model_id}"\nsource = "local"\narch = "{spec.arch}"\n'
                     f'checkpoint = "{checkpoints[spec.model_id]}"\nfamily = "{spec.family}"\n'
                     f"model_kwargs = {{{kw}}}\n")
    return "\n".join(parts)


def study_toml(name: str, results_root: Path, data_root: Path, checkpoints: dict[str, Path], *,
               cache_dir: Path | None = None, methods: list[str] | None = None,
               pairs: list[tuple[str, str]] | None = None, pack_size: int = 16,
               archs: tuple[TinyArch, ...] = ARCHS, extra: str = "") -> str:
    """A whole study: predict -> score -> transfer (``methods`` for ``pairs``) -> report, serial backend."""
    from zoo_study.methods import method_names

    methods = list(method_names()) if methods is None else methods
    ids = [a.model_id for a in archs]
    pairs = pairs if pairs is not None else [(ids[i], ids[(i + 1) % len(ids)]) for i in range(len(ids))]
    cache = f'cache_dir = "{cache_dir}"\n' if cache_dir is not None else ""
    explicit = ", ".join(f'["{t}", "{s}"]' for t, s in pairs)
    return f"""
[study]
name = "{name}"
results_root = "{results_root}"
device = "auto"

[data]
kind = "imagefolder"
root = "{data_root}"
raw_size = 288
{cache}
[zoo]
embedded = "none"

{zoo_entries(checkpoints, archs)}
[predict]
batch_size = 8
topk = 5

[score]
pairs = "all"

[semantics]
enabled = false

[transfer]
methods = {methods!r}
pairs = "explicit"
explicit = [{explicit}]
epochs = 1
batch_size = 4
eval_batch_size = 8
transfer_fraction = 1.0
seeds = [0]

[transfer.hparams.crd]
nce_k = 4

[transfer.hparams.talking_models]
msg_dim = 8

[ray]
address = "local"
pack_size = {pack_size}
max_retries = 0
{extra}""".replace("'", '"')


def main(argv: list[str] | None = None) -> int:
    """``make-tree DIR``: DIR/imagenet (the JPEG tree) and DIR/checkpoints; ``zoo-study ARGS``: the CLI with
    the rehearsal's VOLO registered (``pipelines/configs/rehearsal.toml`` names it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["zoo-study"]:
        from pipelines.cli import main as cli_main

        return cli_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.rehearsal")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tree = sub.add_parser("make-tree", help="write DIR/imagenet and DIR/checkpoints")
    tree.add_argument("dir", type=Path)
    sub.add_parser("zoo-study", help="run the zoo-study CLI with the rehearsal's archs registered")
    args = parser.parse_args(argv)
    make_tree(args.dir / "imagenet")
    paths = write_checkpoints(args.dir / "checkpoints")
    print(f"wrote {args.dir / 'imagenet'} ({len(WNIDS)} classes) and {len(paths)} checkpoints in {args.dir / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
