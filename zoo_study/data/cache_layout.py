"""Where the decoded-image cache lives on disk, how a complete entry is recognised, and the build lock.

Why a module of its own: the on-disk layout is the cache's contract with every other process and every
later job (a stale or half-built entry must never be read), and it is the same whatever is decoded;
:mod:`zoo_study.data.cache` builds and reads through these paths and re-exports :class:`ImageCache`.

Layout, one directory per dataset root + split + subset (the ordered file list with sizes and mtimes)::

    <cache_dir>/<root name>-<hash of root>/
      files-v1.parquet        the root's file index (zoo_study.data.index): path, size, mtime, label
      <split>-n<N>-<hash of file list>/
        .lock                 fcntl.flock: one builder per subset at a time, the others wait, then read
        builds.jsonl          one line per build (pid, geometries, seconds, skipped count)
        v1-r256-c224-bicubic/ one per geometry, renamed into place when complete:
            images.npy        uint8 [N, 3, H, W] (rows of unreadable files stay zero)
            rows.npy          int64 positions (in the split's file order) of the readable images
            manifest.json     counts, geometry, file-list hash, skipped files with their errors

A changed root, split, file list (or a file's size / mtime) or geometry gives another directory, so a
stale cache is never read. Builds write into a temporary directory and ``os.rename`` it (atomic), so a
directory with a manifest is always complete, and a crashed build leaves only a ``.tmp-*`` folder that
the next builder removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from zoo_study.data.base import ImageSplit
from zoo_study.data.geometry import Geometry

__all__ = ["ImageCache", "FORMAT_VERSION", "BUILD_LOG", "root_dir", "subset_dir", "geometry_dir", "read_manifest", "locked",
           "fsync_file", "write_json"]

# the cache's records keep one logger name, whichever of its modules writes them
log = logging.getLogger("zoo_study.data.cache")

FORMAT_VERSION = 1
BUILD_LOG = "builds.jsonl"


@dataclass(frozen=True)
class ImageCache:
    """Where and how one on-disk split may be cached (built by the ImageFolder source from its spec)."""

    cache_dir: str
    dataset_root: str
    split_dir: str  # "train" / "val"
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


def root_dir(cache_dir: str | Path, dataset_root: str | Path) -> Path:
    """``<cache_dir>/<root name>-<hash of root>``: everything cached for one dataset root (its file index
    and one directory per split subset)."""
    root = Path(os.path.abspath(os.path.expanduser(str(dataset_root))))
    root_tag = f"{_safe(root.name)}-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}"
    return Path(os.path.expanduser(str(cache_dir))) / root_tag


def subset_dir(split: ImageSplit, cache: ImageCache) -> tuple[Path, str]:
    """The subset directory of ``split`` and the hash of its file list (paths, sizes, mtimes, ids).

    Sizes and mtimes come from the split's ``file_stats`` (the dataset's file index) when it has them,
    so no file is stat-ed here; else from ``os.stat`` (the same values, the same digest)."""
    root = Path(os.path.abspath(os.path.expanduser(cache.dataset_root)))
    h = hashlib.sha256()
    for i, (f, sid) in enumerate(zip(split.files, split.sample_ids)):
        if split.file_stats is not None:
            size, mtime_ns = (int(v) for v in split.file_stats[i])
        else:
            st = os.stat(f)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        rel = os.path.relpath(os.path.abspath(f), root)
        h.update(f"{rel}\0{size}\0{mtime_ns}\0{int(sid)}\n".encode())
    digest = h.hexdigest()
    base = root_dir(cache.cache_dir, root) / f"{_safe(cache.split_dir)}-n{len(split)}-{digest[:16]}"
    return base, digest


def geometry_dir(base: Path, g: Geometry) -> Path:
    return base / f"v{FORMAT_VERSION}-{g.key}"


def read_manifest(d: Path, digest: str) -> dict | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if m.get("format") != FORMAT_VERSION or m.get("files_sha256") != digest:
        return None
    return m


@contextlib.contextmanager
def locked(base: Path) -> Iterator[None]:
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


# ------------------------------------------------------------------------------------- durable writes
def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
