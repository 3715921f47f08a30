"""Reading a cached split: memory-mapped images, multi-geometry batches, and the batch loader.

Why a module of its own: a cached split must read back exactly like the lazy one (same samples, same
batch order as ``torch.utils.data.DataLoader``, same augmentation draws), only faster; that contract is
the read side's alone and does not depend on how the arrays were built. :mod:`zoo_study.data.cache`
returns these objects from :func:`~zoo_study.data.cache.cached_split` and re-exports them.

With per-model geometries a batch is a :class:`~zoo_study.data.geometry.Views` (one tensor per geometry, same samples) that
:class:`~zoo_study.data.preprocess.ModelPreprocess` reads directly; with a single raw geometry it is a
plain uint8 tensor, as the lazy path gives.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np
import torch

from zoo_study.data.base import ImageSplit
from zoo_study.data.geometry import Geometry, Views

__all__ = ["CachedImages", "CachedBatches"]


class CachedImages:
    """The images of a cached split: per geometry a memory-mapped array and the rows of this split.

    Indexing a single sample gives a uint8 tensor (one raw geometry) or :class:`Views`; :meth:`batch`
    copies whole batches out of the maps. Pickles as paths (the maps are reopened, never copied).
    """

    is_image_cache = True

    def __init__(self, paths: Mapping[Geometry, str], rows: np.ndarray, plain: bool):
        self.paths = dict(paths)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.plain = bool(plain)  # batches are plain tensors (a single raw geometry) instead of Views
        self._maps: dict[Geometry, np.ndarray] | None = None

    @property
    def geometries(self) -> list[Geometry]:
        return list(self.paths)

    def _arrays(self) -> dict[Geometry, np.ndarray]:
        if self._maps is None:
            self._maps = {g: np.load(p, mmap_mode="r") for g, p in self.paths.items()}
        return self._maps

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, split: ImageSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, pin_memory: bool = False) -> "CachedBatches":
        """The split's batches sliced from the maps (what :func:`~zoo_study.data.base.raw_loader` returns)."""
        return CachedBatches(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, pin_memory=pin_memory)

    def take(self, indices: np.ndarray) -> "CachedImages":
        return CachedImages(self.paths, self.rows[np.asarray(indices, dtype=np.int64)], self.plain)

    def _wrap(self, tensors: dict[Geometry, torch.Tensor]):
        return next(iter(tensors.values())) if self.plain else Views(tensors)

    def sample(self, i: int):
        r = int(self.rows[i])
        return self._wrap({g: torch.from_numpy(np.array(a[r])) for g, a in self._arrays().items()})

    def batch(self, positions: np.ndarray):
        """uint8 [B, 3, H, W] per geometry for the split positions ``positions`` (a copy, in order)."""
        rows = self.rows[positions]
        lo = int(rows[0]) if len(rows) else 0
        contiguous = len(rows) > 0 and bool(np.all(np.diff(rows) == 1))
        out = {}
        for g, a in self._arrays().items():  # a slice copy when the rows are consecutive, else a gather
            out[g] = torch.from_numpy(np.array(a[lo : lo + len(rows)]) if contiguous else np.asarray(a[rows]))
        return self._wrap(out)

    def __getstate__(self):
        return {"paths": self.paths, "rows": self.rows, "plain": self.plain}

    def __setstate__(self, state):
        self.paths, self.rows, self.plain = state["paths"], state["rows"], state["plain"]
        self._maps = None


class CachedBatches:
    """``raw_loader`` for a cached split: batches sliced from the memory maps, one batch read ahead.

    Same batches, in the same order, as ``torch.utils.data.DataLoader`` over the split with
    ``shuffle`` and a generator seeded with ``seed`` (one generator for all epochs, drawing per epoch
    what the DataLoader draws: its base seed, the ``randperm`` and RandomSampler's trailing ``randperm``),
    so cached and lazy transfers see the same order (for epochs that are iterated to the end).
    """

    def __init__(self, split: ImageSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, prefetch: bool = True, pin_memory: bool = False):
        self.split, self.batch_size, self.shuffle, self.drop_last, self.prefetch = split, batch_size, shuffle, drop_last, prefetch
        self.pin_memory = pin_memory  # page-locked batches (CUDA): non_blocking copies overlap the GPU
        self.generator = torch.Generator().manual_seed(seed) if shuffle else None

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> np.ndarray:
        n = len(self.split)
        if self.generator is None:
            return np.arange(n, dtype=np.int64)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's _base_seed
        order = torch.randperm(n, generator=self.generator).numpy()
        # RandomSampler's trailing ``randperm(n)[:num_samples % n]``, drawn when an epoch is exhausted
        torch.randperm(n, generator=self.generator)
        return order

    def _fetch(self, idx: np.ndarray):
        s = self.split
        out = (s.images.batch(idx), torch.from_numpy(s.labels[idx]), torch.from_numpy(s.sample_ids[idx]))
        return tuple(t.pin_memory() for t in out) if self.pin_memory else out

    def __iter__(self):
        order = self._order()
        b = self.batch_size
        stops = range(b, len(order) + (1 if self.drop_last else b), b)  # drop_last: every full batch, the last too
        chunks = [order[i - b : min(i, len(order))] for i in stops]
        if not self.prefetch or len(chunks) < 2:
            for idx in chunks:
                yield self._fetch(idx)
            return
        with ThreadPoolExecutor(max_workers=1) as ex:
            fut = ex.submit(self._fetch, chunks[0])
            for nxt in chunks[1:]:
                cur = fut.result()
                fut = ex.submit(self._fetch, nxt)
                yield cur
            yield fut.result()
