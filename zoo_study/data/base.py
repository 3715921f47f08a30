"""The common shape of every dataset split: raw uint8 images, labels, stable sample ids, class names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def _is_cached(images: Any) -> bool:
    """Whether ``images`` are memory-mapped shards of the decoded-image cache (CachedImages)."""
    return getattr(images, "is_image_cache", False) is True


class ImageSplit(Dataset):
    """One split of a dataset, indexable as ``(uint8 image [3, R, R], label, sample_id)``.

    Images live either in memory (``images``: a uint8 array [N, 3, R, R], the generated source) or on
    disk (``files``: paths decoded lazily by ``loader``, the ImageFolder source). ``sample_ids`` are
    stable identifiers of the samples within the split, so prediction tables of different models can be
    joined on them, also after taking subsets.

    ``images`` may also be a :class:`zoo_study.data.cache.CachedImages` (memory-mapped shards of the
    decoded-image cache): then :func:`raw_loader` slices whole batches from the shards, and with per-model
    geometries the batches are :class:`zoo_study.data.cache.Views` that :class:`ModelPreprocess` reads.
    ``cache`` (an :class:`zoo_study.data.cache.ImageCache`, set by the ImageFolder source when a cache
    directory is configured) says where :func:`zoo_study.data.cache.cached_split` may build such shards;
    subsets keep it.
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if _is_cached(self.images):  # CachedImages: a tensor, or Views at several geometries
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
            images=(self.images.take(indices) if _is_cached(self.images)
                    else self.images[indices] if self.images is not None else None),
            files=[self.files[i] for i in indices] if self.files is not None else None,
            loader=self.loader,
            name=name or f"{self.name}[subset]",
            cache=self.cache,
        )


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
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """Batches of ``(uint8 [B,3,R,R], labels int64 [B], sample_ids int64 [B])``; seeded when shuffled.

    A split backed by the decoded-image cache is read by memory-mapped batch slicing instead (no
    decoding, ``num_workers`` is not needed), in the same order as the DataLoader with the same seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _is_cached(split.images):
        from zoo_study.data.cache import CachedBatches

        return CachedBatches(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)  # type: ignore[return-value]
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        split,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
    )
