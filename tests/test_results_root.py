"""A results root is a folder of the tool's own: foreign, system and home folders are refused (exit 2, one
line, nothing written, ``--dry-run`` too), the marker is written on first use, older roots are adopted by
their layout, and the start-up clean-up removes only the tool's own temp files in the folders it writes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.results_root import MARKER, claim, refusal, remove_temp_files, written_folders
from zoo_study.store import temp_name, temp_writer, write_bytes_atomic

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[study]
name = "roottest"
results_root = "{root}"

[zoo]
embedded = ["resnet10t_w16", "mixer_p8"]
random_teachers = []

[transfer]
enabled = false

[ray]
address = "local"
"""


def cli(*args: str) -> int:
    from pipelines.cli import main

    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code)


def _config(tmp_path: Path, root: Path | str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(CONFIG.format(root=root))
    return str(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _refused(capsys, argv: list[str], needle: str) -> None:
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_a_project_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    """Issue 22: ``--set study.results_root=.`` in a project overwrote its config and deleted its .tmp files."""
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "config.toml").write_text("[tool]\nmine = true\n")
    (project / "environment.json").write_text('{"conda": "env"}')
    (project / ".draft.tmp").write_text("draft")
    (project / "notes" / ".todo.tmp").write_text("todo")
    before = _snapshot(project)
    cfg = _config(tmp_path, tmp_path / "unused")
    for extra in ([], ["--dry-run"]):
        _refused(capsys, ["run", cfg, "--stage", "transfer", "--set", f"study.results_root={project}", *extra],
                 "non-empty folder that zoo-study did not create")
    assert _snapshot(project) == before and not (project / MARKER).exists()


@pytest.mark.parametrize("root", ["/", "/usr", "/etc", "/bin", "/tmp", "/usr/share/zoo", "/proc/self", "~"])
def test_system_and_home_folders_are_refused(tmp_path, capsys, root):
    shown = os.path.expanduser(root)
    assert refusal(Path(shown)) is not None
    _refused(capsys, ["run", _config(tmp_path, root), "--stage", "transfer", "--dry-run"], f"results root {shown}")


def test_a_new_or_empty_folder_gets_the_marker_and_is_accepted_again(tmp_path, capsys):
    for root in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        assert refusal(root) is None
        assert cli("run", _config(tmp_path, root), "--stage", "transfer", "--no-progress") == 0
        assert (root / MARKER).is_file() and (root / "config.toml").is_file()
        assert refusal(root) is None  # non-empty now, and ours
        assert cli("run", _config(tmp_path, root), "--stage", "transfer", "--no-progress") == 0
    capsys.readouterr()


def test_a_root_of_an_older_version_is_adopted_by_its_layout(tmp_path, caplog):
    old = tmp_path / "old"
    (old / "_jobs").mkdir(parents=True)
    (old / "config.toml").write_text('[study]\nname = "x"\n')
    assert refusal(old) is None
    with caplog.at_level(logging.INFO, logger="pipelines.results_root"):
        assert claim(old) is True
    assert "adopting" in caplog.text and (old / MARKER).is_file() and claim(old) is False
    env_only = tmp_path / "env_only"  # a failed first run of an older version: config + environment
    env_only.mkdir()
    (env_only / "config.toml").write_text("")
    (env_only / "environment.json").write_text(json.dumps({"zoo-study": "0.1", "python": "3.11"}))
    assert refusal(env_only) is None
    (env_only / "environment.json").write_text(json.dumps({"python": "3.11"}))  # someone else's
    assert "did not create" in refusal(env_only)


def test_temp_names_of_the_atomic_writes_are_recognisable(tmp_path, monkeypatch):
    prefix, suffix = temp_name("x.parquet")
    assert prefix == f".x.parquet.zs-{os.getpid()}-" and suffix == ".tmp"
    assert temp_writer(f"{prefix}ab12cd_9{suffix}") == os.getpid()
    for foreign in (".x.parquet.abc123.tmp", ".draft.tmp", ".x.zs-12-ab.tmp", "x.zs-12-abcdef12.tmp", "a.parquet"):
        assert temp_writer(foreign) is None, foreign
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    write_bytes_atomic(b"x", tmp_path / "a.json")
    assert temp_writer(seen[0]) == os.getpid()


def test_clean_up_removes_only_our_temp_files_of_dead_writers_in_our_folders(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for d in ("scores", "transfers/ab12", "notes", "report"):
        (root / d).mkdir(parents=True)
    outside.mkdir()
    (root / "transfers" / "evil").symlink_to(outside)
    dead = _dead_pid()
    ours = f".pairs.parquet.zs-{dead}-abcd1234.tmp"
    removed = [root / ours, root / "scores" / ours, root / "transfers" / "ab12" / ours]
    kept = [root / ".draft.tmp", root / "scores" / ".pairs.parquet.abc123.tmp",  # not our naming scheme
            root / "notes" / ours,  # not a folder the tool writes
            outside / ours,  # behind a symlink
            root / "scores" / f".pairs.parquet.zs-{os.getpid()}-abcd1234.tmp"]  # its writer still runs
    for p in removed + kept:
        p.write_bytes(b"half")
    report_tmp = root / f".report.zs-{dead}-abcd1234.tmpdir"
    (report_tmp / "figures").mkdir(parents=True)
    (report_tmp / "figures" / "a.png").write_bytes(b"png")
    assert "." in written_folders() and "transfers/*" in written_folders() and "notes" not in written_folders()
    assert remove_temp_files(root) == len(removed) + 1
    assert not any(p.exists() for p in removed) and not report_tmp.exists()
    assert all(p.exists() for p in kept)


# ------------------------------------------------------------------------------ messages about roots
def test_status_reads_a_results_root_and_names_a_folder_that_is_not_one(tmp_path, capsys):
    """Issue 22: ``status <folder>`` said the config "does not exist"."""
    root = tmp_path / "runs"
    assert cli("run", _config(tmp_path, root), "--stage", "transfer", "--no-progress") == 0
    capsys.readouterr()
    assert cli("status", str(root)) == 0
    assert "study 'roottest'" in capsys.readouterr().out
    plain = tmp_path / "plain"
    plain.mkdir()
    _refused(capsys, ["status", str(plain)], "is a folder but not a results root (no config.toml)")


def test_prefetch_without_network_is_one_line_and_exit_1(monkeypatch, capsys):
    """Issue 22: ``prefetch NAME`` offline ended in a traceback. The hub's offline error stands in for the
    network (no download is attempted)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from zoo_study.zoo import loading

    def offline(name, pretrained=False, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache.\nCheck your connection.")

    monkeypatch.setattr(loading.timm, "create_model", offline)
    assert cli("prefetch", "resnet18.a1_in1k") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download resnet18.a1_in1k" in err and "network" in err, err
