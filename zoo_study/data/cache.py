"""Decoded-image cache: decode an on-disk split once, in parallel, into memory-mapped uint8 shards.

Why: decoding a JPEG and resizing it costs ~4 ms per image on one core, so an ImageNet transfer that
decodes every image every epoch spends hours in PIL. The first job that needs a split decodes it once
with N processes; every later job (and every later epoch) slices batches out of ``.npy`` memory maps.

Geometry (what is stored). timm's eval transform is: resize the short side to
``floor(img_size / crop_pct)`` with the model's interpolation (PIL, antialiased), centre-crop
``img_size``, ``ToTensor``, ``Normalize``. Everything before ``ToTensor`` depends only on the
:class:`~zoo_study.data.preprocess.EvalGeometry` (resize, crop, interpolation), not on mean/std. So the
cache stores, per split, **one uint8 array per distinct geometry among the requesting models' data
configs**, each produced from the decoded original image with exactly timm's PIL operations; a model's
input is then that array's batch divided by 255 and normalised (:meth:`ModelPreprocess.normalize`), bit
for bit timm's input. No image is ever upsampled from a smaller cached copy or resampled twice: a
384-pixel model reads a 384 crop made from the original JPEG, a 224/0.95 model its own 235 -> 224 crop.
Zoo models share few geometries (224/0.875 bicubic covers most of timm's ImageNet models), so a job with
a student and a teacher typically needs one or two arrays. A lower-storage alternative (one large square
per split, resampled per model on the fly) is exactly what the lazy path does and what loses accuracy
on real photographs; it is still available as ``geometry='raw'`` (:class:`RawGeometry`): the lazy
path's ``raw_size`` squares, pixel-identical to :func:`~zoo_study.data.imagefolder.load_raw_image`.

Layout, one directory per dataset root + split + subset (the ordered file list with sizes and mtimes)::

    <cache_dir>/<root name>-<hash of root>/<split>-n<N>-<hash of file list>/
        .lock                 fcntl.flock: one builder per subset at a time, the others wait, then read
        builds.jsonl          one line per build (pid, geometries, seconds, skipped count)
        v1-r256-c224-bicubic/ one per geometry, renamed into place when complete:
            images.npy        uint8 [N, 3, H, W] (rows of unreadable files stay zero)
            rows.npy          int64 positions (in the split's file order) of the readable images
            manifest.json     counts, geometry, file-list hash, skipped files with their errors

A changed root, split, file list (or a file's size / mtime) or geometry gives another directory, so a
stale cache is never read. Builds write into a temporary directory and ``os.rename`` it (atomic), so a
directory with a manifest is always complete, and a crashed build leaves only a ``.tmp-*`` folder that
the next builder removes. Unreadable images are reported by path once, at build: ``on_bad_image='skip'``
drops them (counted in the manifest; the cached split's samples are the readable ones, with their
original sample ids), ``'fail'`` raises :class:`BadImageError` naming the file.

Builds decode with ``workers`` processes (forked, as torch's DataLoader does on Linux), each writing
its rows straight into the memory-mapped arrays; a build checks the free disk space first.

Use: :func:`cached_split` (split, data configs) -> an :class:`ImageSplit` whose ``raw_loader`` batches
are sliced from the maps; with per-model geometries a batch is a :class:`Views` (one tensor per
geometry, same samples) that :class:`ModelPreprocess` reads directly (:func:`model_input`), and that
:func:`augment_batch` augments with the same random draws in every geometry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

from zoo_study.data.base import ImageSplit
from zoo_study.data.preprocess import EvalGeometry, ModelPreprocess

__all__ = ["ImageCache", "RawGeometry", "EvalGeometry", "Geometry", "BadImageError", "CachedImages", "Views",
           "CachedBatches", "cached_split", "build_cache", "geometry_of", "distinct_geometries", "render", "render_all",
           "model_input", "augment_batch"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_BUILD_LOG = "builds.jsonl"


class BadImageError(RuntimeError):
    """An image of the split cannot be decoded (``on_bad_image='fail'``); ``path`` names it."""

    def __init__(self, path: str, error: str, n_bad: int = 1):
        self.path, self.error, self.n_bad = path, error, n_bad
        more = f" (and {n_bad - 1} more unreadable image(s))" if n_bad > 1 else ""
        super().__init__(f"cannot decode image {path}: {error}{more}; fix or remove it, or set "
                         "data.on_bad_image='skip' to leave unreadable images out")

    def __reduce__(self):
        return (BadImageError, (self.path, self.error, self.n_bad))


# ------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class RawGeometry:
    """The lazy path's raw square: bicubic short-side resize to ``size`` and centre crop (legacy)."""

    size: int

    @property
    def key(self) -> str:
        return f"raw{self.size}"

    @property
    def crop(self) -> tuple[int, int]:
        return (self.size, self.size)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "raw", "size": self.size}


Geometry = Union[EvalGeometry, RawGeometry]


def geometry_of(config: Mapping[str, Any] | ModelPreprocess | EvalGeometry | RawGeometry) -> Geometry:
    """The cached geometry a model needs, from its timm data config, a ModelPreprocess or a geometry."""
    if isinstance(config, (EvalGeometry, RawGeometry)):
        return config
    pre = config if isinstance(config, ModelPreprocess) else ModelPreprocess.from_data_config(config)
    return pre.geometry


def distinct_geometries(configs: Sequence[Any]) -> list[Geometry]:
    """The distinct geometries of ``configs`` (data configs, ModelPreprocess or geometries), in order."""
    out: list[Geometry] = []
    for c in configs:
        g = geometry_of(c)
        if g not in out:
            out.append(g)
    return out


_PIL_MODES = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "area": "BOX",
              "box": "BOX", "lanczos": "LANCZOS", "hamming": "HAMMING"}


def _resized_size(w: int, h: int, g: EvalGeometry) -> tuple[int, int]:
    """(new_w, new_h) of timm's eval resize for an image of w x h."""
    rh, rw = g.resize
    if rh == rw:  # torchvision Resize(int): the short side becomes rh, the long side is truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = rh, int(rh * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    # timm ResizeKeepRatio(longest=0): scale so that the image covers the target, sides rounded
    ratio = min(h / rh, w / rw)
    return round(w / ratio), round(h / ratio)


def _resize(im, g: EvalGeometry):
    """timm's eval resize (torchvision returns the image unchanged when the size already matches)."""
    from PIL import Image

    size = _resized_size(*im.size, g)
    return im if size == im.size else im.resize(size, getattr(Image, _PIL_MODES[g.interpolation]))


def _centre_crop(im, crop: tuple[int, int]) -> np.ndarray:
    """torchvision CenterCrop (zero padding when the crop is larger, else offsets round(diff / 2))."""
    nw, nh = im.size
    ch, cw = crop
    left = -((cw - nw) // 2) if cw > nw else int(round((nw - cw) / 2.0))
    top = -((ch - nh) // 2) if ch > nh else int(round((nh - ch) / 2.0))
    if (left, top, cw, ch) != (0, 0, nw, nh):
        im = im.crop((left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def render(im, geometry: Geometry) -> np.ndarray:
    """A decoded RGB PIL image -> uint8 [3, H, W] at ``geometry``, with timm's (PIL) operations."""
    return render_all(im, [geometry])[0]


def render_all(im, geometries: Sequence[Geometry]) -> list[np.ndarray]:
    """:func:`render` for several geometries of one image; geometries sharing a resize share its work."""
    from zoo_study.data.imagefolder import raw_square

    resized: dict[tuple, Any] = {}
    out = []
    for g in geometries:
        if isinstance(g, RawGeometry):
            out.append(raw_square(im, g.size).transpose(2, 0, 1))
            continue
        k = (_resized_size(*im.size, g), g.interpolation)
        if k not in resized:
            resized[k] = _resize(im, g)
        out.append(_centre_crop(resized[k], g.crop))
    return out


def _decode(path: str):
    """Decode an image file as timm's dataset does: ``Image.open(f).convert('RGB')``."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


# ------------------------------------------------------------------------------------- cache config
@dataclass(frozen=True)
class ImageCache:
    """Where and how one on-disk split may be cached (built by the ImageFolder source from its spec)."""

    cache_dir: str
    dataset_root: str
    split_dir: str  # "train" / "val"
    geometry: str = "model"  # "model": per-model eval geometries; "raw": the lazy path's raw squares
    workers: int = 0  # 0: one per available CPU
    on_bad_image: str = "fail"  # "skip" | "fail"

    def n_workers(self) -> int:
        if self.workers > 0:
            return int(self.workers)
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover (not Linux)
            return max(1, os.cpu_count() or 1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "root"


def _subset_dir(split: ImageSplit, cache: ImageCache) -> tuple[Path, str]:
    """The subset directory of ``split`` and the hash of its file list (paths, sizes, mtimes, ids)."""
    root = Path(os.path.abspath(os.path.expanduser(cache.dataset_root)))
    h = hashlib.sha256()
    for f, sid in zip(split.files, split.sample_ids):
        st = os.stat(f)
        rel = os.path.relpath(os.path.abspath(f), root)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{int(sid)}\n".encode())
    digest = h.hexdigest()
    root_tag = f"{_safe(root.name)}-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}"
    base = Path(os.path.expanduser(cache.cache_dir)) / root_tag / f"{_safe(cache.split_dir)}-n{len(split)}-{digest[:16]}"
    return base, digest


def _geometry_dir(base: Path, g: Geometry) -> Path:
    return base / f"v{FORMAT_VERSION}-{g.key}"


def _read_manifest(d: Path, digest: str) -> dict | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if m.get("format") != FORMAT_VERSION or m.get("files_sha256") != digest:
        return None
    return m


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the image cache in %s", base)
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("image cache lock acquired after %.1f s", time.monotonic() - t0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
            outs = render_all(_decode(path), [g for g, _ in arrays])
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        raise OSError(f"the image cache needs {need / 1e9:.1f} GB in {base} but {free / 1e9:.1f} GB are free; "
                      "point data.cache_dir at a larger local disk or unset it")
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
            _fsync(d / "images.npy")
            np.save(d / "rows.npy", rows)
            manifest = {
                "format": FORMAT_VERSION, "key": g.key, "geometry": g.as_dict(),
                "dataset_root": str(cache.dataset_root), "split": cache.split_dir, "split_name": split.name,
                "files_sha256": digest, "n_files": n, "n_images": int(len(rows)), "n_skipped": len(skipped),
                "skipped": skipped, "on_bad_image": cache.on_bad_image, "shape": list(_shape(n, g)),
                "dtype": "uint8", "build_id": build_id, "build_pid": os.getpid(), "workers": workers,
                "build_seconds": round(seconds, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_json(d / "manifest.json", manifest)
            os.rename(d, _geometry_dir(base, g))
        with open(base / _BUILD_LOG, "a") as f:
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
    base, digest = _subset_dir(split, cache)
    dirs = {g: _geometry_dir(base, g) for g in geometries}
    missing = [g for g, d in dirs.items() if _read_manifest(d, digest) is None]
    if missing:
        with _locked(base):
            missing = [g for g in missing if _read_manifest(dirs[g], digest) is None]  # built while we waited?
            if missing:
                _build(split, missing, base, digest, cache)
    return dirs


# ---------------------------------------------------------------------------------------------- read
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
        stops = range(b, len(order) + (0 if self.drop_last else b), b)
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


def cached_split(split: ImageSplit, data_configs: Sequence[Any] | None = None, *,
                 cache: ImageCache | None = None) -> ImageSplit:
    """``split`` read from the decoded-image cache, building the cache first when needed.

    ``data_configs``: the timm data configs (or ModelPreprocess / geometries) of every model that will
    read this split in the job (student, teachers). With ``cache.geometry == 'model'`` one array per
    distinct geometry is cached and batches are :class:`Views`; with ``'raw'`` (or no configs) the
    lazy path's ``raw_size`` squares are cached and batches are plain uint8 tensors, as today.
    Without a cache (``split.cache`` is None and none given) the split is returned unchanged: the lazy
    path. Unreadable images skipped at build are left out (the sample ids of the others are kept).
    """
    cache = cache or split.cache
    if cache is None:
        return split
    if cache.geometry == "model" and data_configs:
        geoms, plain = distinct_geometries(list(data_configs)), False
    else:
        geoms, plain = [RawGeometry(split.raw_size)], True
    if _is_cached_split(split):
        missing = [g.key for g in geoms if g not in split.images.paths]
        if missing:
            raise ValueError(f"{split.name} is already read from the image cache without geometry {', '.join(missing)}; "
                             "call cached_split() on the on-disk split with every model's data config at once")
        return split
    dirs = build_cache(split, geoms, cache)
    valid: np.ndarray | None = None
    for d in dirs.values():  # the readable rows (the same in every geometry unless a file changed state)
        rows = np.load(d / "rows.npy")
        valid = rows if valid is None else np.intersect1d(valid, rows)
    assert valid is not None
    if len(valid) < len(split):
        log.info("%s: %d unreadable image(s) left out (listed in %s)", split.name, len(split) - len(valid),
                 next(iter(dirs.values())) / "manifest.json")
    images = CachedImages({g: str(d / "images.npy") for g, d in dirs.items()}, valid, plain)
    return ImageSplit(labels=split.labels[valid], sample_ids=split.sample_ids[valid], class_names=split.class_names,
                      raw_size=split.raw_size, images=images, name=split.name, cache=cache)


def _is_cached_split(split: ImageSplit) -> bool:
    return getattr(split.images, "is_image_cache", False) is True


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
