"""Which folders may be a results root, the root's marker, and the start-up clean-up of our temp files.

Why: ``zoo-study run`` writes ``config.toml``, ``environment.json``, ``report/`` and its result folders into
the root, and tidies up temp files there. Pointed at a folder that is not a study's (``results_root = "."``
in a project, ``/``, a home folder), it would overwrite and delete files that are not its own. So:

* :func:`refusal` names why a folder cannot be a results root: ``/``, a home folder (of any user) or
  its parent, a system folder (``/usr``, ``/etc``, ``/bin``, ``/proc`` ... and what is under them; ``/tmp``,
  ``/var``, ``/opt`` ... themselves), or a non-empty folder without the tool's marker file
  :data:`MARKER`. ``zoo-study run`` (``--dry-run`` too) refuses such a root with exit 2 before anything
  is written.
* :func:`claim` writes the marker on first use, under the root's lock.
* Roots written by versions before the marker existed are recognised by their layout and adopted (the
  marker is added, with a log line): a result table file at its catalogue path (``scores/pairs.parquet``,
  ``transfers/<job_id>/summary.parquet`` ...), or a ``config.toml`` together with ``_jobs/`` or with an
  ``environment.json`` that names zoo-study's version (:func:`older_root`).
* :func:`remove_temp_files` removes only the temp files that :mod:`zoo_study.store`'s atomic writes name
  ``.<name>.zs-<pid>-<random>.tmp`` (and the report's temp folders), of writers no longer running, in
  the folders the tool writes (the catalogue's folders): never other ``.tmp`` files, never recursively.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

from pipelines.ray_leftovers import SESSION_FILE
from zoo_study.store import FILES, TABLES, ResultsLayout, temp_writer, write_text_atomic

__all__ = ["MARKER", "claim", "older_root", "refusal", "remove_temp_files", "written_folders"]

LOG = logging.getLogger("pipelines.results_root")
MARKER = ".zoo-study-root"
OWN_FILES = frozenset({MARKER, ".zoo-study.lock", SESSION_FILE})  # the lock's name: pipelines.lock.LOCK_NAME

# system folders refused with everything below them, and folders refused themselves (their subfolders
# are where results usually go: /tmp/x, /opt/study, /home/me/runs)
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/System", "/Library", "/private/etc")
SYSTEM_FOLDERS = ("/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/var/lib", "/opt", "/srv", "/mnt", "/media",
                  "/snap", "/Users", "/Volumes", "/Applications", "/private", "/private/tmp", "/private/var")


def _homes() -> set[Path]:
    """Every user's home folder (this user's from $HOME too)."""
    homes = {Path(os.path.expanduser("~"))}
    try:
        homes |= {Path(p.pw_dir) for p in pwd.getpwall() if p.pw_dir}
    except OSError:
        pass
    return homes


def _spellings(root: Path) -> list[Path]:
    """The root as given (made absolute) and with its links resolved (``/tmp`` may be ``/private/tmp``)."""
    plain = Path(os.path.abspath(root))
    return list(dict.fromkeys([plain, plain.resolve()]))


def _protected(root: Path) -> str | None:
    for path in _spellings(root):
        text = path.as_posix()
        if text == "/" or text in SYSTEM_FOLDERS or Path(text) == Path(tempfile.gettempdir()):
            return f"results root {root} is a system folder ({text})"
        if any(text == t or text.startswith(t + "/") for t in SYSTEM_TREES):
            return f"results root {root} is inside a system folder ({text})"
        if path in _homes():
            return f"results root {root} is a home folder ({text})"
    return None


def older_root(root: Path) -> bool:
    """Whether ``root`` is a results root written before the marker existed (see the module docstring)."""
    layout = ResultsLayout(root)
    if any(next(root.glob(t.glob), None) for t in TABLES.values()):
        return True
    if not layout.config_file.is_file():
        return False
    if layout.job_records_dir.is_dir():
        return True
    try:
        return "zoo-study" in json.loads(layout.environment_file.read_text())
    except (OSError, ValueError, TypeError):
        return False


def refusal(root: str | os.PathLike[str]) -> str | None:
    """Why ``root`` must not be a results root (one line), or None. Reads only."""
    root = Path(root)
    if why := _protected(root):
        return f"{why}; give a folder of its own, e.g. runs/<study>"
    if not root.is_dir() or (root / MARKER).is_file():
        return None
    foreign = sorted(p.name for p in root.iterdir() if p.name not in OWN_FILES)
    if not foreign or older_root(root):
        return None
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (f"results root {root} is a non-empty folder that zoo-study did not create (no {MARKER}; it holds "
            f"{shown}); give a new or empty folder, e.g. runs/<study>")


def claim(root: str | os.PathLike[str], log: logging.Logger | None = None) -> bool:
    """Write the marker unless the root has it (call while holding the lock); whether it was written."""
    root = Path(root)
    if (root / MARKER).is_file():
        return False
    if older_root(root):
        (log or LOG).info("adopting %s, a results root written by an earlier zoo-study version (marker %s added)",
                          root, MARKER)
    note = {"created_by": "zoo-study", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "note": "this folder is a zoo-study results root; zoo-study writes and tidies up only here"}
    write_text_atomic(json.dumps(note, indent=2) + "\n", root / MARKER)
    return True


def written_folders() -> list[str]:
    """The folders (globs relative to the root) that the tool writes files into, from the catalogue."""
    folders = {str(PurePosixPath(e.glob).parent) for e in (*TABLES.values(), *FILES.values())}
    return sorted(folders | {"report/figures", "report/tables"})


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's
        return True
    return True


def _own_folder(root: Path, folder: Path) -> bool:
    """Whether ``folder`` is a real folder under ``root`` reached through no symlink."""
    here = root
    for part in folder.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            return False
    return folder.is_dir()


def remove_temp_files(root: str | os.PathLike[str]) -> int:
    """Delete the temp files (and report temp folders) of writers that no longer run, by our naming scheme
    only, in the folders the tool writes; their count. Call only while holding the lock. Links are never
    followed: a folder or file that is a symlink is left alone."""
    root = Path(root)
    n = 0
    for pattern in written_folders():
        for folder in ([root] if pattern == "." else root.glob(pattern)):
            if not _own_folder(root, folder):
                continue
            for entry in folder.iterdir():
                pid = temp_writer(entry.name)
                if pid is None or entry.is_symlink() or _writer_alive(pid):
                    continue
                try:
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    n += 1
                except OSError:
                    pass
    return n
