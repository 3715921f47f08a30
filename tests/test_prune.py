"""``zoo-study prune``: results that no given config plans are listed, moved aside with --apply (never
deleted), current ones are never touched, and misuse exits 2 with nothing moved."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.cli import main
from pipelines.lock import ResultsLock
from pipelines.prune import PRUNED_DIR, _key_regex, common_root

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MICRO = micro_study("prune") + """
[transfer]
methods = {methods}
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"]]
epochs = 1
batch_size = 32
transfer_fraction = 0.25

[ray]
address = "local"
"""


def _config(tmp: Path, name: str, root: Path, methods: list[str], pairs: str = "explicit") -> Path:
    cfg = tmp / f"{name}.toml"
    text = MICRO.format(root=root, methods=methods).replace("'", '"')
    if pairs != "explicit":
        text = text.replace('pairs = "explicit"', f'pairs = "{pairs}"\nn_pairs = 1')
    cfg.write_text(text)
    return cfg


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A root where kl and xe_kl ran; the current config keeps only kl."""
    tmp = tmp_path_factory.mktemp("prune")
    root = tmp / "root"
    old = _config(tmp, "old", root, ["kl", "xe_kl"])
    assert main(["run", str(old), "--no-progress", "--stage", "zoo,predict,transfer"]) == 0
    new = _config(tmp, "new", root, ["kl"])
    ids = {m: next(d.name for d in (root / "transfers").iterdir()
                   if pq.read_table(d / "summary.parquet").column("method")[0].as_py() == m) for m in ("kl", "xe_kl")}
    return tmp, root, old, new, ids


def test_key_regex_reads_the_key_of_a_path():
    rx = _key_regex("transfers/{job_id}/summary.parquet")
    assert rx.match("transfers/ab12/summary.parquet").group("job_id") == "ab12"
    assert rx.match("transfers/ab12/epochs.parquet") is None
    assert rx.match("transfers/a/b/summary.parquet") is None
    assert _key_regex("predictions/model={model}.parquet").match("predictions/model=m_1.parquet").group("model") == "m_1"


def test_lists_without_moving_and_keeps_what_a_config_plans(study, capsys):
    tmp, root, old, new, ids = study
    before = _files(root)
    assert main(["prune", str(new)]) == 0
    out = capsys.readouterr().out
    stale = {line.strip() for line in out.splitlines() if line.startswith("    ")}
    assert stale == {f"transfers/{ids['xe_kl']}/summary.parquet", f"transfers/{ids['xe_kl']}/epochs.parquet",
                     f"transfers/{ids['xe_kl']}/predictions.parquet", f"_jobs/{ids['xe_kl']}.json"}
    assert "nothing moved; rerun with --apply" in out
    assert _files(root) == before
    # both configs together plan everything on disk
    assert main(["prune", str(new), str(old)]) == 0
    assert "nothing to prune" in capsys.readouterr().out


def test_apply_moves_the_stale_files_aside_and_the_study_stays_complete(tmp_path, capsys):
    root = tmp_path / "root"
    old = _config(tmp_path, "old", root, ["kl", "xe_kl"])
    assert main(["run", str(old), "--no-progress", "--stage", "zoo,predict,transfer"]) == 0
    new = _config(tmp_path, "new", root, ["kl"])
    before = _files(root)
    capsys.readouterr()
    assert main(["prune", str(new), "--apply"]) == 0
    assert "4 file(s)" in capsys.readouterr().out
    after = _files(root)
    moved = before - after
    (stamp,) = [d.name for d in (root / PRUNED_DIR).iterdir()]
    assert {p for p in after if p.startswith(PRUNED_DIR)} == {f"{PRUNED_DIR}/{stamp}/{p}" for p in moved}
    assert len(moved) == 4 and all(p.startswith(("transfers/", "_jobs/")) for p in moved)
    assert len(list((root / "transfers").iterdir())) == 1  # the emptied transfer folder is gone
    # the current study is untouched: nothing to run, and the tables hold only its transfer
    assert main(["run", str(new), "--dry-run", "--stage", "zoo,predict,transfer"]) == 0
    plan = capsys.readouterr().out
    rows = [line.split() for line in plan.splitlines()[2:] if line.strip()]
    assert [r[0] for r in rows] == ["zoo", "predict", "transfer"] and all(r[-1] == "0" for r in rows), plan
    from analysis.db import connect

    with connect(root) as db:
        assert db.query("SELECT method FROM transfers").column("method").to_pylist() == ["kl"]
    assert main(["prune", str(new)]) == 0
    assert "nothing to prune" in capsys.readouterr().out


def test_misuse_exits_2_and_moves_nothing(study, tmp_path, capsys):
    _, root, old, new, _ = study
    before = _files(root)
    other = _config(tmp_path, "other", tmp_path / "elsewhere", ["kl"])
    with pytest.raises(SystemExit) as err:
        main(["prune", str(new), str(other)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "different results roots" in msg and str(root) in msg and "elsewhere" in msg
    # transfers sampled from scores that this root does not have: what is current is unknown
    sampled = _config(tmp_path, "sampled", root, ["kl"], pairs="sample")
    with pytest.raises(SystemExit) as err:
        main(["prune", str(sampled)])
    assert err.value.code == 2 and "--stage zoo,predict,score" in capsys.readouterr().err
    # a root in use by a run
    lock = ResultsLock(root).acquire()
    try:
        with pytest.raises(SystemExit) as err:
            main(["prune", str(new), "--apply"])
        assert err.value.code == 2
    finally:
        lock.release()
    assert _files(root) == before


def test_common_root_names_each_config():
    assert common_root([("a", Path("r")), ("b", Path("r"))]) == Path("r")
    with pytest.raises(ValueError, match="a -> r1, b -> r2"):
        common_root([("a", Path("r1")), ("b", Path("r2"))])


def test_a_root_without_results_and_a_bad_config_exit_2_and_write_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = _config(tmp_path, "fresh", empty, ["kl"])
    with pytest.raises(SystemExit) as err:
        main(["prune", str(cfg)])
    assert err.value.code == 2 and "holds no study results" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # not even a lock file
    bad = tmp_path / "bad.toml"
    bad.write_text(MICRO.format(root=empty, methods=["no_such_method"]).replace("'", '"'))
    with pytest.raises(SystemExit) as err:
        main(["prune", str(bad)])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "no_such_method" in msg and len(msg.strip().splitlines()) == 1
    assert list(empty.iterdir()) == []
