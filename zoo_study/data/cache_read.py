"""Reading a cached split: memory-mapped images, multi-geometry batches, and the batch loader.

Why a module of its own: a cached split must read back exactly like the lazy one (same samples, same
batch order as ``torch.utils.data.DataLoader``, same augmentation draws), only faster; that contract is
the read side's alone and does not depend on how the arrays were built. :mod:`zoo_study.data.cache`
returns these objects from :func:`~zoo_study.data.cache.cached_split` and re-exports them.

With per-model geometries a batch is a :class:`Views` (one tensor per geometry, same samples) that
:class:`~zoo_study.data.preprocess.ModelPreprocess` reads directly; with a single raw geometry it is a
plain uint8 tensor, as the lazy path gives.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import numpy as np
import torch

from zoo_study.data.base import ImageSplit
from zoo_study.data.cache_geometry import Geometry, RawGeometry

__all__ = ["Views", "CachedImages", "CachedBatches"]


class Views(Mapping):
    """One batch (or one image) at several cached geometries: the same samples, in the same order.

    A mapping geometry -> uint8 tensor. Tensor methods (``to``, ``pin_memory``, ``unsqueeze``,
    ``expand``, ...) apply to every view; :class:`ModelPreprocess` picks the view at its own geometry
    (:meth:`view_for`). ``len()`` is the number of geometries; :attr:`batch_size` the number of samples.
    """

    def __init__(self, tensors: Mapping[Geometry, torch.Tensor]):
        self._t = dict(tensors)

    def __getitem__(self, g: Geometry) -> torch.Tensor:
        return self._t[g]

    def __iter__(self):
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return "Views(" + ", ".join(f"{g.key}: {tuple(t.shape)}" for g, t in self._t.items()) + ")"

    @property
    def batch_size(self) -> int:
        return int(next(iter(self._t.values())).shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Views":
        return Views({g: fn(t) for g, t in self._t.items()})

    def to(self, *args: Any, **kwargs: Any) -> "Views":
        return self.map(lambda t: t.to(*args, **kwargs))

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(torch.Tensor, name, None)):
            raise AttributeError(name)
        return lambda *a, **k: self.map(lambda t: getattr(t, name)(*a, **k))

    def view_for(self, geometry: Geometry) -> tuple[torch.Tensor, bool]:
        """(tensor, exact): the view at ``geometry``, else a raw-square view to resample (not exact)."""
        if geometry in self._t:
            return self._t[geometry], True
        raws = [g for g in self._t if isinstance(g, RawGeometry)]
        if raws:
            return self._t[max(raws, key=lambda g: g.size)], False
        have = ", ".join(g.key for g in self._t)
        raise ValueError(f"the cached batch has no view at geometry {geometry.key} (it has {have}); pass this "
                         "model's data config to cached_split() together with the others")

    def __getstate__(self):
        return self._t

    def __setstate__(self, state):
        self._t = state


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
                 drop_last: bool = False, prefetch: bool = True):
        self.split, self.batch_size, self.shuffle, self.drop_last, self.prefetch = split, batch_size, shuffle, drop_last, prefetch
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
        return s.images.batch(idx), torch.from_numpy(s.labels[idx]), torch.from_numpy(s.sample_ids[idx])

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
