"""ImageFolder / ImageNet source: a root with ``train/`` and ``val/`` folders of class sub-folders.

When every class folder is an ImageNet-1k WordNet id (``n01440764``...), labels are ImageNet indices
and class names are timm's ImageNetInfo descriptions, so pretrained 1000-way classifiers are scored in
their own label space even when the folder holds only some of the classes. Otherwise classes are the
sorted folder names.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from zoo_study.data.base import DataSource, ImageSplit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # matched case-insensitively (.JPEG, .Png, ...)
_WNID = re.compile(r"^n\d{8}$")
SPLIT_DIRS = {"train": "train", "eval": "val"}


@dataclass(frozen=True)
class ImageFolderSpec:
    root: str
    raw_size: int = 256  # every image becomes [3, raw_size, raw_size]: short side resize + centre crop


def load_raw_image(path: str | Path, raw_size: int) -> torch.Tensor:
    """Decode an image file to uint8 [3, raw_size, raw_size] (short-side resize, centre crop)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = raw_size / min(w, h)
        nw, nh = max(raw_size, round(w * s)), max(raw_size, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - raw_size) // 2, (nh - raw_size) // 2
        im = im.crop((left, top, left + raw_size, top + raw_size))
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _imagenet_names() -> tuple[list[str], dict[str, int]]:
    import zoo_study  # noqa: F401  (torchvision compat before timm)
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())
    names = [info.label_name_to_description(w).split(",")[0].strip() for w in wnids]
    # two pairs of ImageNet classes share a first lemma ('crane' the bird and the machine, 'maillot'
    # twice): give those the WordNet id as well so every class name is unique
    counts = Counter(names)
    names = [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(names, wnids)]
    return names, {w: i for i, w in enumerate(wnids)}


def make_imagefolder(spec: ImageFolderSpec) -> DataSource:
    """Index ``root/train`` and ``root/val``; images are decoded lazily when read."""
    root = Path(os.path.expanduser(spec.root))
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} is a file, not a folder with train/ and val/ class folders")
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {str(root)!r} does not exist; expected a folder with train/ and val/ class folders "
            "(ImageNet layout). Set data.root in the config or the ZOO_STUDY_IMAGENET environment variable."
        )
    for split_name in SPLIT_DIRS.values():
        if not (root / split_name).is_dir():
            raise FileNotFoundError(
                f"dataset root {str(root)!r} has no {split_name}/ folder; expected train/ and val/ with one "
                "sub-folder per class"
            )
    folders = sorted(set(_class_folders(root / "train")) | set(_class_folders(root / "val")))
    if not folders:
        raise FileNotFoundError(f"dataset root {str(root)!r} has no class folders under train/ or val/")
    imagenet_names, imagenet_index = _imagenet_names() if all(_WNID.match(f) for f in folders) else ([], {})
    if imagenet_names and all(f in imagenet_index for f in folders):
        class_names, index = imagenet_names, imagenet_index
        label_space = "imagenet-1k"
    else:
        class_names, index = folders, {f: i for i, f in enumerate(folders)}
        label_space = "folders"

    loader = partial(_loader_entry)
    splits: dict[str, ImageSplit] = {}
    for split, dirname in SPLIT_DIRS.items():
        files: list[str] = []
        labels: list[int] = []
        for folder in _class_folders(root / dirname):
            for f in sorted((root / dirname / folder).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    files.append(str(f))
                    labels.append(index[folder])
        if not files:
            raise FileNotFoundError(f"no images found under {str(root / dirname)!r} (suffixes {IMAGE_SUFFIXES})")
        splits[split] = ImageSplit(
            labels=np.asarray(labels, dtype=np.int64),
            sample_ids=np.arange(len(files), dtype=np.int64),
            class_names=class_names,
            raw_size=spec.raw_size,
            files=files,
            loader=loader,
            name=f"{root.name}/{dirname}",
        )
    return DataSource(
        name=f"imagefolder:{root}",
        train=splits["train"],
        eval=splits["eval"],
        class_names=class_names,
        meta={"root": str(root), "label_space": label_space},
    )


def _loader_entry(path: str | Path, raw_size: int) -> torch.Tensor:
    # a module-level function so DataLoader workers can pickle it
    return load_raw_image(path, raw_size)
