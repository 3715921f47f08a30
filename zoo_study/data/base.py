"""The common shape of every dataset split: raw uint8 images, labels, stable sample ids, class names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def default_workers() -> int:
    """DataLoader processes for an on-disk split: one per available CPU, at most 8 (PIL decoding and
    resizing is about 4 ms per ImageNet image per core, so 8 feed one GPU at ~2,000 images/s)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class ImageSplit(Dataset):
    """One split of a dataset, indexable as ``(uint8 image [3, R, R], label, sample_id)``.

    Images live either in memory (``images``: a uint8 array [N, 3, R, R], the generated source) or on
    disk (``files``: paths decoded lazily by ``loader``, the ImageFolder source). ``sample_ids`` are
    stable identifiers of the samples within the split, so prediction tables of different models can be
    joined on them, also after taking subsets.

    ``images`` may also be an image store (``is_image_cache = True``: the decoded-image cache's
    :class:`~zoo_study.data.cache_read.CachedImages`) with ``sample(i)``, ``take(indices)`` and
    ``batches(split, batch_size, ...)``: then :func:`raw_loader` reads whole batches from it, and with
    per-model geometries the batches are :class:`~zoo_study.data.geometry.Views` that
    :class:`ModelPreprocess` reads. ``cache`` (an :class:`~zoo_study.data.cache_layout.ImageCache`, set by
    the ImageFolder source when a cache directory is configured) says where
    :func:`zoo_study.data.cache.cached_split` may build such a store; subsets keep it. ``num_workers`` is
    the DataLoader processes that decode an on-disk split, ``pixels`` what they decode it to ('model':
    each reading model's timm eval geometry, 'raw': ``raw_size`` squares); ``file_stats`` (sizes and mtimes of ``files``,
    from the dataset's file index) spare the cache key a ``stat`` per file.
    """

    def __init__(
        self,
        *,
        labels: np.ndarray,
        sample_ids: np.ndarray,
        class_names: Sequence[str],
        raw_size: int,
        images: np.ndarray | None = None,
        files: Sequence[str | Path] | None = None,
        loader: Callable[[str | Path, int], torch.Tensor] | None = None,
        name: str = "split",
        cache: Any = None,
        num_workers: int = 0,
        file_stats: np.ndarray | None = None,
        pixels: str = "model",
    ) -> None:
        if (images is None) == (files is None):
            raise ValueError("an ImageSplit needs exactly one of `images` (in memory) or `files` (on disk)")
        n = len(labels)
        if len(sample_ids) != n or (images is not None and len(images) != n) or (files is not None and len(files) != n):
            raise ValueError("labels, sample_ids and images/files must have the same length")
        if files is not None and loader is None:
            raise ValueError("an on-disk ImageSplit needs a `loader`")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.class_names = list(class_names)
        self.raw_size = int(raw_size)
        self.images = images
        self.files = list(files) if files is not None else None
        self.loader = loader
        self.name = name
        self.cache = cache
        self.num_workers = int(num_workers)
        self.file_stats = None if file_stats is None else np.asarray(file_stats, dtype=np.int64)  # [N, 2]
        self.pixels = pixels  # on disk: "model" (each model's timm eval geometry) or "raw" (raw_size squares)

    @property
    def is_cached(self) -> bool:
        """Whether the images are an image store (the decoded-image cache), the one place this is asked."""
        return getattr(self.images, "is_image_cache", False) is True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.is_cached:  # an image store: a tensor, or Views at several geometries
            img = self.images.sample(int(i))
        elif self.images is not None:
            img = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        else:
            img = self.loader(self.files[i], self.raw_size)
        return img, int(self.labels[i]), int(self.sample_ids[i])

    def subset(self, indices: np.ndarray, name: str | None = None) -> "ImageSplit":
        """A view of the given rows that keeps their original sample ids."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSplit(
            labels=self.labels[indices],
            sample_ids=self.sample_ids[indices],
            class_names=self.class_names,
            raw_size=self.raw_size,
            images=(self.images.take(indices) if self.is_cached
                    else self.images[indices] if self.images is not None else None),
            files=[self.files[i] for i in indices] if self.files is not None else None,
            loader=self.loader,
            name=name or f"{self.name}[subset]",
            cache=self.cache,
            num_workers=self.num_workers,
            file_stats=self.file_stats[indices] if self.file_stats is not None else None,
            pixels=self.pixels,
        )

    def with_store(self, images: Any, rows: np.ndarray) -> "ImageSplit":
        """The rows ``rows`` of this split read from an image store (``images``, one entry per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageSplit(labels=self.labels[rows], sample_ids=self.sample_ids[rows], class_names=self.class_names,
                          raw_size=self.raw_size, images=images, name=self.name, cache=self.cache,
                          num_workers=self.num_workers, pixels=self.pixels)

    def with_loader(self, loader: Callable[[str | Path, int], Any]) -> "ImageSplit":
        """This on-disk split read through another ``loader`` (e.g. one rendering model geometries)."""
        return ImageSplit(labels=self.labels, sample_ids=self.sample_ids, class_names=self.class_names,
                          raw_size=self.raw_size, files=self.files, loader=loader, name=self.name, cache=self.cache,
                          num_workers=self.num_workers, file_stats=self.file_stats, pixels=self.pixels)


@dataclass
class DataSource:
    """A dataset with a train and an eval split and shared class metadata."""

    name: str
    train: ImageSplit
    eval: ImageSplit
    class_names: list[str]
    superclass_of: list[int] | None = None  # super-class index per class, when known
    superclass_names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "eval"):
            raise ValueError(f"unknown split {name!r}; valid: 'train', 'eval'")
        return self.train if name == "train" else self.eval


def raw_loader(
    split: ImageSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Batches of ``(uint8 [B,3,R,R] or Views, labels int64 [B], sample_ids int64 [B])``; seeded when shuffled.

    A split read from an image store (the decoded-image cache) is read by its own batch slicing
    (no decoding), in the same order as the DataLoader with the same seed. An on-disk split is decoded
    by ``num_workers`` DataLoader processes (default: the split's, set from ``data.loader_workers``),
    never in the calling thread, into page-locked memory when CUDA is available (``pin_memory``), so
    decoding and host-to-device copies overlap the GPU's work. In-memory splits are read in-process.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
    if split.is_cached:
        return split.images.batches(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                    pin_memory=pin)
    on_disk = split.files is not None
    workers = (split.num_workers if on_disk else 0) if num_workers is None else int(num_workers)
    workers = min(workers, max(1, -(-len(split) // batch_size)))  # no more processes than batches
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        split,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=pin and on_disk,  # 2 batches ahead per worker (DataLoader's default prefetch)
    )
