"""Decoded-image cache: decode an on-disk split once, in parallel, into memory-mapped uint8 shards.

Why: decoding a JPEG and resizing it costs ~4 ms per image on one core, so an ImageNet transfer that
decodes every image every epoch spends hours in PIL. The first job that needs a split decodes it once
with N processes; every later job (and every later epoch) slices batches out of ``.npy`` memory maps.

This module is the entry point and the builder. What is stored (one uint8 array per distinct model
geometry, rendered with timm's own PIL operations) is described in :mod:`zoo_study.data.geometry` and
rendered by :mod:`zoo_study.data.decode`;
where it is stored, how a complete entry is recognised and the build lock in
:mod:`zoo_study.data.cache_layout`; how a cached split reads back in :mod:`zoo_study.data.cache_read`.
Their public names are re-exported here.

Unreadable images are reported by path once, at build: ``on_bad_image='skip'`` drops them (counted in
the manifest; the cached split's samples are the readable ones, with their original sample ids),
``'fail'`` raises :class:`BadImageError` naming the file.

Builds decode with ``workers`` processes (forked, as torch's DataLoader does on Linux), each writing
its rows straight into the memory-mapped arrays; a build checks the free disk space first.

Use: :func:`cached_split` (split, data configs) -> an :class:`ImageSplit` whose ``raw_loader`` batches
are sliced from the maps; with per-model geometries a batch is a :class:`Views` (one tensor per
geometry, same samples) that :class:`ModelPreprocess` reads directly (:func:`model_input`), and that
:func:`augment_batch` augments with the same random draws in every geometry.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from zoo_study.data.base import ImageSplit
from zoo_study.data.decode import RenderLoader, decode_rgb, render, render_all  # noqa: F401  (re-exported)
from zoo_study.data.geometry import (  # noqa: F401  (re-exported)
    EvalGeometry,
    Geometry,
    RawGeometry,
    Views,
    distinct_geometries,
    geometry_of,
)
from zoo_study.data.cache_layout import (
    BUILD_LOG,
    FORMAT_VERSION,
    ImageCache,
    fsync_file,
    geometry_dir,
    locked,
    read_manifest,
    subset_dir,
    write_json,
)
from zoo_study.data.cache_read import CachedBatches, CachedImages  # noqa: F401  (re-exported)
from zoo_study.data.preprocess import ModelPreprocess

__all__ = ["ImageCache", "RawGeometry", "EvalGeometry", "Geometry", "BadImageError", "CacheSpaceError", "CachedImages", "Views",
           "CachedBatches", "cached_split", "build_cache", "geometry_of", "distinct_geometries", "render", "render_all",
           "model_input", "augment_batch"]

log = logging.getLogger(__name__)


class CacheSpaceError(OSError):
    """The cache folder's disk has too little room for a build: the split is then decoded on the fly
    (the same pixels, only slower), with a warning."""


class BadImageError(RuntimeError):
    """An image of the split cannot be decoded (``on_bad_image='fail'``); ``path`` names it."""

    def __init__(self, path: str, error: str, n_bad: int = 1):
        self.path, self.error, self.n_bad = path, error, n_bad
        more = f" (and {n_bad - 1} more unreadable image(s))" if n_bad > 1 else ""
        super().__init__(f"cannot decode image {path}: {error}{more}; fix or remove it, or set "
                         "data.on_bad_image='skip' to leave unreadable images out")

    def __reduce__(self):
        return (BadImageError, (self.path, self.error, self.n_bad))


# --------------------------------------------------------------------------------------------- build
_WORKER_MAPS: dict[str, np.ndarray] = {}


def _open_rw(path: str) -> np.ndarray:
    mm = _WORKER_MAPS.get(path)
    if mm is None:
        mm = _WORKER_MAPS[path] = np.load(path, mmap_mode="r+")
    return mm


def _decode_chunk(start: int, paths: Sequence[str], targets: Sequence[tuple[Geometry, str]]) -> tuple[int, list]:
    """Decode ``paths`` (rows start..) into every target array; returns (count, [(row, error)])."""
    arrays = [(g, _open_rw(p)) for g, p in targets]
    bad: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            outs = render_all(decode_rgb(path), [g for g, _ in arrays])
        except Exception as e:  # noqa: BLE001 (any decode failure is reported with its path)
            bad.append((start + i, f"{type(e).__name__}: {e}"))
            continue
        for (_, mm), out in zip(arrays, outs):
            mm[start + i] = out
    for _, mm in arrays:
        mm.flush()
    return len(paths), bad


def _release_worker_maps() -> None:
    _WORKER_MAPS.clear()


def _mp_context():
    # fork as torch's DataLoader does on Linux (workers only run PIL and numpy); spawn elsewhere
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _decode_all(files: Sequence[str], targets: list[tuple[Geometry, str]], workers: int, fail_fast: bool,
                progress: Callable[[int, int], None] | None) -> list[tuple[int, str]]:
    n = len(files)
    bad: list[tuple[int, str]] = []
    chunk = max(8, min(256, math.ceil(n / (workers * 8))))
    chunks = [(s, list(files[s : s + chunk])) for s in range(0, n, chunk)]
    done = 0
    if workers <= 1 or len(chunks) == 1:
        try:
            for s, paths in chunks:
                k, b = _decode_chunk(s, paths, targets)
                bad += b
                done += k
                if progress:
                    progress(done, n)
                if b and fail_fast:
                    break
        finally:
            _release_worker_maps()
        return bad
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context()) as ex:
        pending = {ex.submit(_decode_chunk, s, paths, targets) for s, paths in chunks}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    k, b = fut.result()
                    bad += b
                    done += k
                if progress:
                    progress(done, n)
                if bad and fail_fast:
                    break
        finally:
            for fut in pending:
                fut.cancel()
    return bad


def _shape(n: int, g: Geometry) -> tuple[int, int, int, int]:
    h, w = g.crop
    return (n, 3, int(h), int(w))


def _build(split: ImageSplit, geoms: list[Geometry], base: Path, digest: str, cache: ImageCache) -> None:
    """Decode ``split`` once into one array per geometry (caller holds the lock)."""
    n = len(split)
    for stale in base.glob(".tmp-*"):  # left by a crashed build: nobody else builds while we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    need = sum(int(np.prod(_shape(n, g))) for g in geoms)
    free = shutil.disk_usage(base).free
    if need > free:
        raise CacheSpaceError(f"the image cache needs {need / 1e9:.1f} GB in {base} but {free / 1e9:.1f} GB are free; "
                              "point data.cache_dir at a larger local disk, or set it to \"none\"")
    workers = cache.n_workers()
    build_id = uuid.uuid4().hex
    tmp = {g: base / f".tmp-{g.key}-{os.getpid()}-{build_id[:8]}" for g in geoms}
    t0 = time.monotonic()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 30:
            last[0] = now
            log.info("image cache %s: %d/%d images (%.0f/s)", base.name, done, total, done / max(now - t0, 1e-9))

    try:
        targets = []
        for g, d in tmp.items():
            d.mkdir()
            np.lib.format.open_memmap(d / "images.npy", mode="w+", dtype=np.uint8, shape=_shape(n, g)).flush()
            targets.append((g, str(d / "images.npy")))
        log.info("building the image cache for %s (%d images, %s) with %d worker(s) in %s", split.name, n,
                 ", ".join(g.key for g in geoms), workers, base)
        fail = cache.on_bad_image == "fail"
        bad = sorted(_decode_all(split.files, targets, workers, fail, progress))
        if bad and fail:
            row, err = bad[0]
            raise BadImageError(str(split.files[row]), err, len(bad))
        skipped = [{"path": str(split.files[row]), "error": err} for row, err in bad]
        for s in skipped:  # reported once, here; later reads only see the count in the manifest
            log.warning("image cache: skipping unreadable image %s (%s)", s["path"], s["error"])
        rows = np.setdiff1d(np.arange(n, dtype=np.int64), np.asarray([r for r, _ in bad], dtype=np.int64))
        seconds = time.monotonic() - t0
        for g, d in tmp.items():
            fsync_file(d / "images.npy")
            np.save(d / "rows.npy", rows)
            manifest = {
                "format": FORMAT_VERSION, "key": g.key, "geometry": g.as_dict(),
                "dataset_root": str(cache.dataset_root), "split": cache.split_dir, "split_name": split.name,
                "files_sha256": digest, "n_files": n, "n_images": int(len(rows)), "n_skipped": len(skipped),
                "skipped": skipped, "on_bad_image": cache.on_bad_image, "shape": list(_shape(n, g)),
                "dtype": "uint8", "build_id": build_id, "build_pid": os.getpid(), "workers": workers,
                "build_seconds": round(seconds, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json(d / "manifest.json", manifest)
            os.rename(d, geometry_dir(base, g))
        with open(base / BUILD_LOG, "a") as f:
            f.write(json.dumps({"build_id": build_id, "pid": os.getpid(), "geometries": [g.key for g in geoms],
                                "n_files": n, "n_skipped": len(skipped), "seconds": round(seconds, 3),
                                "workers": workers}) + "\n")
        log.info("image cache %s built in %.1f s (%.0f images/s)", base.name, seconds, n / max(seconds, 1e-9))
    finally:
        for d in tmp.values():
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)


def build_cache(split: ImageSplit, geometries: Sequence[Geometry], cache: ImageCache) -> dict[Geometry, Path]:
    """Make sure every geometry of ``split`` is cached (decoding at most once, under a lock)."""
    if split.files is None:
        raise ValueError("only an on-disk split (ImageFolder) can be cached; this one is already in memory")
    base, digest = subset_dir(split, cache)
    dirs = {g: geometry_dir(base, g) for g in geometries}
    missing = [g for g, d in dirs.items() if read_manifest(d, digest) is None]
    if missing:
        with locked(base):
            missing = [g for g in missing if read_manifest(dirs[g], digest) is None]  # built while we waited?
            if missing:
                _build(split, missing, base, digest, cache)
    return dirs


# ---------------------------------------------------------------------------------------------- read
def cached_split(split: ImageSplit, data_configs: Sequence[Any] | None = None, *,
                 cache: ImageCache | None = None) -> ImageSplit:
    """``split`` as the job's models read it: from the decoded-image cache (built first when needed), or
    decoded on the fly at the same geometries when no cache is configured.

    ``data_configs``: the timm data configs (or ModelPreprocess / geometries) of every model that will
    read this split in the job (student, teachers). With ``split.pixels == 'model'`` (the default) one
    image per distinct geometry is made from the decoded original with timm's eval operations and
    batches are :class:`Views`: each model's input is timm's ``create_transform`` output bit for bit,
    with or without a cache. With ``'raw'`` (or no configs) the ``raw_size`` squares are read and batches
    are plain uint8 tensors. Without a cache, an on-disk split gets a loader that renders the geometries
    in the DataLoader's worker processes; an in-memory split (generated data) is returned unchanged.
    Unreadable images skipped at a cache build are left out (the sample ids of the others are kept).
    """
    cache = cache or split.cache
    raw = split.pixels == "raw" or not data_configs
    geoms = [RawGeometry(split.raw_size)] if raw else distinct_geometries(list(data_configs))
    have = _read_geometries(split)
    if have is not None:  # already read at fixed geometries (a cache, or the on-the-fly renderer)
        missing = [g.key for g in geoms if g not in have]
        if missing:
            raise ValueError(f"{split.name} is already read at fixed geometries, without geometry {', '.join(missing)}; "
                             "call cached_split() on the on-disk split with every model's data config at once")
        return split
    if split.files is None:
        return split  # in memory: nothing to decode
    if cache is None:
        return split if raw else split.with_loader(RenderLoader(geoms))
    try:
        dirs = build_cache(split, geoms, cache)
    except CacheSpaceError as err:
        log.warning("%s: decoding on the fly instead: %s", split.name, err)
        return split if raw else split.with_loader(RenderLoader(geoms))
    valid: np.ndarray | None = None
    for d in dirs.values():  # the readable rows (the same in every geometry unless a file changed state)
        rows = np.load(d / "rows.npy")
        valid = rows if valid is None else np.intersect1d(valid, rows)
    assert valid is not None
    if len(valid) < len(split):
        log.info("%s: %d unreadable image(s) left out (listed in %s)", split.name, len(split) - len(valid),
                 next(iter(dirs.values())) / "manifest.json")
    return split.with_store(CachedImages({g: str(d / "images.npy") for g, d in dirs.items()}, valid, raw), valid)


def _read_geometries(split: ImageSplit) -> list[Geometry] | None:
    """The geometries a split is already read at (a cache store or a RenderLoader), else None."""
    if split.is_cached:
        return list(split.images.paths)
    if isinstance(split.loader, RenderLoader):
        return list(split.loader.geometries)
    return None


def model_input(batch: torch.Tensor | Views, config: Mapping[str, Any] | ModelPreprocess) -> torch.Tensor:
    """A model's normalised float input from a (cached or raw) batch and its timm data config."""
    pre = config if isinstance(config, ModelPreprocess) else ModelPreprocess.from_data_config(config)
    return pre(batch)


def augment_batch(augment: Callable[..., torch.Tensor] | None, batch: torch.Tensor | Views,
                  generator: torch.Generator | None = None) -> torch.Tensor | Views:
    """``augment(batch, generator)``; for :class:`Views` every geometry gets the same random draws (flip,
    colour, grayscale per sample), so all models still see the same augmented picture. The generator
    ends in the state one call leaves it in, as for a plain tensor."""
    if augment is None:
        return batch
    if not isinstance(batch, Views):
        return augment(batch, generator)
    if generator is None:
        state = torch.get_rng_state()
        out = {}
        for g, t in batch.items():
            torch.set_rng_state(state)
            out[g] = augment(t, None)
        return Views(out)
    state = generator.get_state()
    out = {}
    for g, t in batch.items():
        generator.set_state(state)
        out[g] = augment(t, generator)
    return Views(out)
