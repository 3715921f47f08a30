"""Results that no given config plans any more: find them, and move them out of the tables' way.

Why: the analysis views read every file of a table's kind under a results root (``store.TABLES``). A
result of a superseded setting (an old method version, a variant under its old id, a dropped pair) stays
on disk after its config changed, and from then on enters every table and claim next to the current
ones. ``zoo-study prune CONFIG [CONFIG ...]`` lists such files for all the configs that share one root;
``--apply`` moves them into ``<root>/_pruned/<UTC time>/`` (same relative paths: moving them back restores
them; deleting that folder frees the space). Nothing is ever deleted here.

What counts as planned: every job of every job stage of every given config (the same plans as
``zoo-study run --dry-run``). A file of a catalogue kind keyed by ``{job_id}`` (transfer folders, grid and
robustness rows, job records, failure records) is stale when no planned job has its id; a file keyed by
``{model}`` (catalog rows, weights, predictions) when no planned job writes that path. Files without a
key (scores, the report, the config) are left alone: their stages rewrite them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from pipelines.jobs import Job
from zoo_study import store

PRUNED_DIR = "_pruned"


@dataclass(frozen=True)
class StaleFile:
    path: str  # relative to the results root
    kind: str  # its catalogue entry ("transfers", "job_record", ...)
    size: int


@dataclass
class PrunePlan:
    root: Path
    stale: list[StaleFile] = field(default_factory=list)
    kept: int = 0  # files of keyed kinds that a given config plans

    def by_kind(self) -> dict[str, list[StaleFile]]:
        out: dict[str, list[StaleFile]] = {}
        for f in self.stale:
            out.setdefault(f.kind, []).append(f)
        return out

    def summary(self, limit: int = 10) -> str:
        """What is stale, per kind, with the first ``limit`` paths of each."""
        if not self.stale:
            return f"nothing to prune in {self.root}: all {self.kept} keyed result files are planned by the config(s)"
        mb = sum(f.size for f in self.stale) / 1e6
        lines = [f"{len(self.stale)} file(s) ({mb:.1f} MB) in {self.root} that no given config plans "
                 f"({self.kept} planned file(s) kept):"]
        for kind, files in self.by_kind().items():
            lines.append(f"  {kind} ({store.shown(kind)}): {len(files)}")
            lines += [f"    {f.path}" for f in files[:limit]]
            if len(files) > limit:
                lines.append(f"    ... and {len(files) - limit} more")
        return "\n".join(lines)


def _key_regex(template: str) -> re.Pattern[str]:
    """``transfers/{job_id}/summary.parquet`` -> a regex capturing the key of a relative path."""
    parts = re.split(r"(\{[a-z_]+\})", template)
    body = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


def find_stale(root: str | Path, jobs: Iterable[Job]) -> PrunePlan:
    """Every file of a keyed catalogue kind under ``root`` that none of ``jobs`` would write. Reads only."""
    root = Path(root)
    jobs = list(jobs)
    ids = {j.job_id for j in jobs}
    outputs = {Path(p).as_posix() for j in jobs for p in j.outputs.values()}
    plan = PrunePlan(root)
    seen: set[str] = set()
    for name, entry, keys in store.keyed_entries():
        rx = _key_regex(entry.template)
        for path in sorted(root.glob(entry.glob)):
            rel = path.relative_to(root).as_posix()
            m = rx.match(rel)
            if m is None or not path.is_file() or rel in seen:
                continue
            seen.add(rel)
            planned = m.group("job_id") in ids if "job_id" in keys else rel in outputs
            if planned:
                plan.kept += 1
            else:
                plan.stale.append(StaleFile(rel, name, path.stat().st_size))
    return plan


def move_stale(plan: PrunePlan, stamp: str | None = None) -> Path:
    """Move every stale file to ``<root>/_pruned/<stamp>/<its path>`` (a rename: same filesystem) and remove
    the folders this empties (a transfer's ``transfers/<job_id>/``). Returns the folder they went to."""
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest_root = plan.root / PRUNED_DIR / stamp
    for f in plan.stale:
        src, dest = plan.root / f.path, dest_root / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dest)
        parent = src.parent
        while parent != plan.root and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return dest_root


def common_root(roots: Sequence[tuple[str, Path]]) -> Path:
    """The one results root of several configs (``(config name, root)``); ValueError naming each otherwise."""
    distinct = {r.resolve() for _, r in roots}
    if len(distinct) != 1:
        listed = ", ".join(f"{name} -> {root}" for name, root in roots)
        raise ValueError(f"the configs write to different results roots ({listed}); prune one root at a time, "
                         f"giving every config that writes to it")
    return roots[0][1]
