"""ImageFolder / ImageNet source: a root with ``train/`` and ``val/`` folders of class sub-folders.

When every class folder is an ImageNet-1k WordNet id (``n01440764``...), labels are ImageNet indices
and class names are timm's ImageNetInfo descriptions, so pretrained 1000-way classifiers are scored in
their own label space even when the folder holds only some of the classes. Otherwise classes are the
sorted folder names.

A job calls :func:`zoo_study.data.cache.cached_split` with its models' data configs: with ``cache_dir``
set (the pipeline's default) it reads memory-mapped uint8 arrays of the decoded-image cache
(:mod:`zoo_study.data.cache`), else DataLoader workers decode each model's timm eval geometry on the fly.
The file list comes from the root's file index (:mod:`zoo_study.data.index`) beside the cache when it is
current, so a task does not walk the root.

Class folders that hold no image, and classes present in only one of ``train/`` and ``val/``, are
logged as warnings and recorded in ``DataSource.meta`` (``empty_class_folders``, ``classes_only_in``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zoo_study.data.base import DataSource, ImageSplit, default_workers
from zoo_study.data.cache_layout import ImageCache, root_dir
from zoo_study.data.decode import load_raw_image, raw_square  # noqa: F401  (raw_square re-exported)
from zoo_study.data.index import INDEX_FILE, FileIndex, load_index, scan, write_index

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
    loader_workers: int | None = None  # DataLoader processes decoding an on-disk split; None: default_workers()
    # the file index (zoo_study.data.index) beside the cache: "use" it when current (else walk and write
    # it), "refresh" it from a full walk (the driver's prepare step); unused without a cache_dir
    index: Literal["use", "refresh"] = "use"

    def __post_init__(self) -> None:
        if self.cache_geometry not in ("model", "raw"):
            raise ValueError(f"cache_geometry must be 'model' or 'raw', got {self.cache_geometry!r}")
        if self.on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {self.on_bad_image!r}")
        if int(self.cache_workers) < 0:
            raise ValueError(f"cache_workers must be >= 0 (0: one per CPU), got {self.cache_workers}")
        if self.loader_workers is not None and int(self.loader_workers) < 0:
            raise ValueError(f"loader_workers must be >= 0 (0: decode in the calling process), got {self.loader_workers}")


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
    """Index ``root/train`` and ``root/val`` (or read the index); images are decoded when read."""
    root = Path(os.path.expanduser(spec.root))
    _check_root(root)
    folders = sorted(set(_class_folders(root / "train")) | set(_class_folders(root / "val")))
    if not folders:
        raise FileNotFoundError(f"dataset root {str(root)!r} has no class folders under train/ or val/")
    class_names, index_of, label_space = _label_space(folders)
    index = _file_index(spec, root, list(SPLIT_DIRS.values()), index_of)
    workers = default_workers() if spec.loader_workers is None else int(spec.loader_workers)
    splits: dict[str, ImageSplit] = {}
    empty: dict[str, list[str]] = {}
    present: dict[str, set[str]] = {}
    for split, dirname in SPLIT_DIRS.items():
        files, labels, stats = index.split(dirname)
        if not files:
            raise FileNotFoundError(f"no images found under {str(root / dirname)!r} (suffixes {IMAGE_SUFFIXES})")
        have = set(labels.tolist())
        folders_here = _class_folders(root / dirname)
        present[dirname] = {f for f in folders_here if index_of[f] in have}
        empty[dirname] = [f for f in folders_here if index_of[f] not in have]
        cache = None
        if spec.cache_dir is not None:
            cache = ImageCache(cache_dir=str(spec.cache_dir), dataset_root=str(root), split_dir=dirname,
                               workers=int(spec.cache_workers), on_bad_image=spec.on_bad_image)
        splits[split] = ImageSplit(labels=labels, sample_ids=np.arange(len(files), dtype=np.int64),
                                   class_names=class_names, raw_size=spec.raw_size, files=files, loader=_loader_entry,
                                   name=f"{root.name}/{dirname}", cache=cache, num_workers=workers, file_stats=stats,
                                   pixels=spec.cache_geometry)
    meta: dict = {"root": str(root), "label_space": label_space}
    meta.update(_folder_warnings(root, empty, present))
    return DataSource(name=f"imagefolder:{root}", train=splits["train"], eval=splits["eval"], class_names=class_names,
                      meta=meta)


def _check_root(root: Path) -> None:
    """A root that is missing, a file, or without train/ and val/ is refused, saying what is expected."""
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


def _label_space(folders: list[str]) -> tuple[list[str], dict[str, int], str]:
    """(class names, folder -> label, label space): ImageNet-1k's when every folder is one of its WordNet
    ids (pretrained classifiers are scored in their own label space), else the sorted folder names."""
    imagenet_names, imagenet_index = _imagenet_names() if all(_WNID.match(f) for f in folders) else ([], {})
    if imagenet_names and all(f in imagenet_index for f in folders):
        return imagenet_names, imagenet_index, "imagenet-1k"
    return folders, {f: i for i, f in enumerate(folders)}, "folders"


def _folder_warnings(root: Path, empty: dict[str, list[str]], present: dict[str, set[str]]) -> dict:
    """Log class folders without images and classes present in only one split; their meta entries."""
    for dirname, folders_empty in empty.items():
        if folders_empty:
            log.warning("%s: %d class folder(s) without images under %s/: %s", root, len(folders_empty), dirname,
                        _some(folders_empty))
    train_dir, val_dir = SPLIT_DIRS["train"], SPLIT_DIRS["eval"]
    only = {train_dir: sorted(present[train_dir] - present[val_dir]),
            val_dir: sorted(present[val_dir] - present[train_dir])}
    for dirname, classes in only.items():
        other = val_dir if dirname == train_dir else train_dir
        if classes:
            log.warning("%s: %d class(es) have images in %s/ but none in %s/: %s", root, len(classes), dirname,
                        other, _some(classes))
    return {"empty_class_folders": {d: list(v) for d, v in empty.items()}, "classes_only_in": only}


def _some(names: list[str], k: int = 10) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _loader_entry(path: str | Path, raw_size: int) -> torch.Tensor:
    """The raw-square loader (``pixels = 'raw'``): a module-level function so DataLoader workers pickle it."""
    return load_raw_image(path, raw_size)


def _file_index(spec: ImageFolderSpec, root: Path, dirs: list[str], label_of: dict[str, int]) -> FileIndex:
    """The root's file index: read from beside the cache when it is current, else one walk (written
    there for the next task when a cache folder is set)."""
    path = root_dir(spec.cache_dir, root) / INDEX_FILE if spec.cache_dir is not None else None
    if path is not None and spec.index == "use":
        found = load_index(path, root, dirs, _class_folders)
        if found is not None:
            return found
    index = scan(root, dirs, _class_folders, IMAGE_SUFFIXES, label_of)
    if path is not None:
        try:
            write_index(index, path)
        except OSError as err:  # a read-only cache folder only costs the next task a walk
            log.warning("could not write the file index %s: %s", path, err)
    return index
