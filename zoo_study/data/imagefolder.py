"""ImageFolder / ImageNet source: a root with ``train/`` and ``val/`` folders of class sub-folders.

When every class folder is an ImageNet-1k WordNet id (``n01440764``...), labels are ImageNet indices
and class names are timm's ImageNetInfo descriptions, so pretrained 1000-way classifiers are scored in
their own label space even when the folder holds only some of the classes. Otherwise classes are the
sorted folder names.

With ``cache_dir`` set, each split also knows where to build its decoded-image cache
(:mod:`zoo_study.data.cache`): a job calls :func:`zoo_study.data.cache.cached_split` with its models'
data configs and reads memory-mapped uint8 shards instead of decoding JPEGs every epoch.

Class folders that hold no image, and classes present in only one of ``train/`` and ``val/``, are
logged as warnings and recorded in ``DataSource.meta`` (``empty_class_folders``, ``classes_only_in``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zoo_study.data.base import DataSource, ImageSplit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # matched case-insensitively (.JPEG, .Png, ...)
_WNID = re.compile(r"^n\d{8}$")
SPLIT_DIRS = {"train": "train", "eval": "val"}


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFolderSpec:
    root: str
    raw_size: int = 256  # every image becomes [3, raw_size, raw_size]: short side resize + centre crop
    # decoded-image cache (zoo_study.data.cache); None: decode lazily on every read (no cache)
    cache_dir: str | None = None
    # "model": one array per distinct timm eval geometry of the requesting models (timm's eval transform
    # exactly); "raw": the raw_size squares of the lazy path (the same pixels, only faster)
    cache_geometry: Literal["model", "raw"] = "model"
    cache_workers: int = 0  # decoding processes for a cache build; 0: one per CPU available
    on_bad_image: Literal["skip", "fail"] = "fail"  # at cache build: drop (and count) or raise, naming it

    def __post_init__(self) -> None:
        if self.cache_geometry not in ("model", "raw"):
            raise ValueError(f"cache_geometry must be 'model' or 'raw', got {self.cache_geometry!r}")
        if self.on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {self.on_bad_image!r}")
        if int(self.cache_workers) < 0:
            raise ValueError(f"cache_workers must be >= 0 (0: one per CPU), got {self.cache_workers}")


def raw_square(im, raw_size: int) -> np.ndarray:
    """An RGB PIL image -> uint8 [raw_size, raw_size, 3]: bicubic short-side resize, centre crop."""
    from PIL import Image

    w, h = im.size
    s = raw_size / min(w, h)
    nw, nh = max(raw_size, round(w * s)), max(raw_size, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - raw_size) // 2, (nh - raw_size) // 2
    im = im.crop((left, top, left + raw_size, top + raw_size))
    return np.asarray(im, dtype=np.uint8)


def load_raw_image(path: str | Path, raw_size: int, cached: bool = False) -> torch.Tensor:
    """Decode an image file to uint8 [3, raw_size, raw_size] (short-side resize, centre crop).

    ``cached``: whether the split has a decoded-image cache configured, so the error's hint fits: with one,
    ``data.on_bad_image = 'skip'`` is the remedy; without one, setting ``data.cache_dir`` comes first."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = raw_square(im.convert("RGB"), raw_size).copy()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated, corrupt or not an image
        hint = ("data.on_bad_image = 'skip' drops and counts unreadable ones when the cache is built" if cached else
                "set data.cache_dir to check every image once when the cache is built (data.on_bad_image = "
                "'skip' drops and counts unreadable ones)")
        raise OSError(f"unreadable image {str(path)!r}: {exc}; remove or replace it, or {hint}") from exc
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

    loader = partial(_loader_entry, cached=spec.cache_dir is not None)
    splits: dict[str, ImageSplit] = {}
    empty: dict[str, list[str]] = {}
    present: dict[str, set[str]] = {}
    for split, dirname in SPLIT_DIRS.items():
        files: list[str] = []
        labels: list[int] = []
        empty[dirname], present[dirname] = [], set()
        for folder in _class_folders(root / dirname):
            before = len(files)
            for f in sorted((root / dirname / folder).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    files.append(str(f))
                    labels.append(index[folder])
            if len(files) > before:
                present[dirname].add(folder)
            else:
                empty[dirname].append(folder)
        if not files:
            raise FileNotFoundError(f"no images found under {str(root / dirname)!r} (suffixes {IMAGE_SUFFIXES})")
        cache = None
        if spec.cache_dir is not None:
            from zoo_study.data.cache import ImageCache

            cache = ImageCache(cache_dir=str(spec.cache_dir), dataset_root=str(root), split_dir=dirname,
                               geometry=spec.cache_geometry, workers=int(spec.cache_workers),
                               on_bad_image=spec.on_bad_image)
        splits[split] = ImageSplit(
            labels=np.asarray(labels, dtype=np.int64),
            sample_ids=np.arange(len(files), dtype=np.int64),
            class_names=class_names,
            raw_size=spec.raw_size,
            files=files,
            loader=loader,
            name=f"{root.name}/{dirname}",
            cache=cache,
        )
    meta: dict = {"root": str(root), "label_space": label_space}
    for dirname, folders_empty in empty.items():
        if folders_empty:
            log.warning("%s: %d class folder(s) without images under %s/: %s", root, len(folders_empty), dirname,
                        _some(folders_empty))
    meta["empty_class_folders"] = {d: list(v) for d, v in empty.items()}
    train_dir, val_dir = SPLIT_DIRS["train"], SPLIT_DIRS["eval"]
    only = {train_dir: sorted(present[train_dir] - present[val_dir]),
            val_dir: sorted(present[val_dir] - present[train_dir])}
    for dirname, classes in only.items():
        other = val_dir if dirname == train_dir else train_dir
        if classes:
            log.warning("%s: %d class(es) have images in %s/ but none in %s/: %s", root, len(classes), dirname,
                        other, _some(classes))
    meta["classes_only_in"] = only
    return DataSource(
        name=f"imagefolder:{root}",
        train=splits["train"],
        eval=splits["eval"],
        class_names=class_names,
        meta=meta,
    )


def _some(names: list[str], k: int = 10) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _loader_entry(path: str | Path, raw_size: int, cached: bool = False) -> torch.Tensor:
    # a module-level function so DataLoader workers can pickle it
    return load_raw_image(path, raw_size, cached)
