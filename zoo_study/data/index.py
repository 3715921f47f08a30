"""The file index of an ImageFolder root: every image's relative path, size, mtime and label, built once.

Why: listing ImageNet is ~1.33M directory entries, and the decoded-image cache's key needs every file's
size and mtime (~180k ``stat`` calls for a 10% transfer set plus the val split). Done in every GPU task
that is 20-40 s per task on a local SSD and minutes on network storage. So the walk is done once, by a
CPU step on the driver before any GPU task (:func:`zoo_study.data.prepare.prepare_images`), and written
beside the cache as Parquet (``<cache_dir>/<root tag>/files-v1.parquet``); tasks read it instead.

An index is used only while it still describes the tree: it records the mtime of ``train/``, ``val/``
and every class folder (a file added, removed or renamed changes its folder's mtime), so checking it
costs ~2,000 ``stat`` calls instead of walking. A file rewritten in place under the same name keeps its
folder's mtime: the driver's step rebuilds the index from a full walk on every run, which catches it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["INDEX_FILE", "INDEX_SCHEMA", "FileIndex", "scan", "load_index", "write_index"]

INDEX_FILE = "files-v1.parquet"
INDEX_SCHEMA = pa.schema([
    pa.field("split", pa.string(), nullable=False),  # train | val
    pa.field("path", pa.string(), nullable=False),  # relative to the root: val/n01440764/x.JPEG
    pa.field("size", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
])
_META_KEY = b"zoo_study.folders"  # JSON {relative folder: mtime_ns} for train/, val/ and every class folder


class FileIndex:
    """The indexed files of one root: a table (INDEX_SCHEMA) in split / class folder / file name order."""

    def __init__(self, root: Path, table: pa.Table, folders: Mapping[str, int]):
        self.root, self.table, self.folders = root, table, dict(folders)

    def split(self, dirname: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(absolute paths, labels int64 [N], stats int64 [N, 2] = size, mtime_ns) of one split folder."""
        t = self.table.filter(pc.equal(self.table.column("split"), dirname))
        prefix = str(self.root) + os.sep  # str(root / p), without building 1.3M Path objects
        paths = [prefix + p for p in t.column("path").to_pylist()]
        stats = np.stack([t.column("size").to_numpy(), t.column("mtime_ns").to_numpy()], axis=1).astype(np.int64)
        return paths, t.column("label").to_numpy().astype(np.int64), stats.reshape(-1, 2)


def _folder_mtimes(root: Path, split_dirs: list[str], class_folders: Callable[[Path], list[str]]) -> dict[str, int]:
    out = {}
    for d in split_dirs:
        out[d] = os.stat(root / d).st_mtime_ns
        for folder in class_folders(root / d):
            out[f"{d}/{folder}"] = os.stat(root / d / folder).st_mtime_ns
    return out


def scan(root: Path, split_dirs: list[str], class_folders: Callable[[Path], list[str]], suffixes: tuple[str, ...],
         label_of: Mapping[str, int]) -> FileIndex:
    """Walk ``root``'s split folders once: every image file (by suffix, case-insensitive) with its stat.

    Files in each class folder are in name order (as ``sorted(Path.iterdir())``), so the sample ids of a
    split (its row numbers) are the same as a walk gives."""
    folders = _folder_mtimes(root, split_dirs, class_folders)
    cols: dict[str, list] = {f.name: [] for f in INDEX_SCHEMA}
    for d in split_dirs:
        for folder in class_folders(root / d):
            with os.scandir(root / d / folder) as it:
                entries = sorted((e for e in it if os.path.splitext(e.name)[1].lower() in suffixes),
                                 key=lambda e: e.name)
            for e in entries:
                if not e.is_file():
                    continue
                st = e.stat()
                cols["split"].append(d)
                cols["path"].append(f"{d}/{folder}/{e.name}")
                cols["size"].append(st.st_size)
                cols["mtime_ns"].append(st.st_mtime_ns)
                cols["label"].append(int(label_of[folder]))
    return FileIndex(root, pa.table(cols, schema=INDEX_SCHEMA), folders)


def write_index(index: FileIndex, path: Path) -> None:
    """Write the index atomically (temp file + rename): a reader sees the old index or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {_META_KEY: json.dumps(index.folders, sort_keys=True).encode(), b"zoo_study.root": str(index.root).encode()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(index.table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, path)


def load_index(path: Path, root: Path, split_dirs: list[str],
               class_folders: Callable[[Path], list[str]]) -> FileIndex | None:
    """The index at ``path`` if it exists, is of ``root`` and its folders' mtimes are unchanged; else None."""
    try:
        table = pq.read_table(path)
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"zoo_study.root", b"").decode() != str(root) or table.schema.remove_metadata() != INDEX_SCHEMA:
        return None
    try:
        recorded = json.loads(meta[_META_KEY])
        current = _folder_mtimes(root, split_dirs, class_folders)
    except (KeyError, ValueError, OSError):
        return None
    if recorded != current:
        return None
    return FileIndex(root, table.replace_schema_metadata(None), recorded)
