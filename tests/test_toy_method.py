"""A method with state and a table of its own, declared in one module (tests/helpers/toy_method.py), runs
end to end: the config names it, the planner gives its job the method's table as an output, the transfer
writes it, the analysis reads it in SQL (ResultsDB and ``zoo-study sql``), and the report labels it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.cli import main

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MICRO = micro_study("toy") + """
[transfer]
methods = ["toy_counted"]
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"]]
epochs = 1
batch_size = 32
transfer_fraction = 0.5

[transfer.hparams.toy_counted]
lambda = 0.25

[ray]
address = "local"
"""


@pytest.fixture()
def toy():
    """Import the toy's module (its decorator registers it); afterwards unregister it and forget the module."""
    from zoo_study.methods import unregister_method

    module = importlib.import_module("helpers.toy_method")
    yield module
    unregister_method(module.NAME)
    sys.modules.pop("helpers.toy_method", None)


def test_toy_method_with_state_and_table_end_to_end(toy, tmp_path: Path, capsys) -> None:
    from analysis.db import connect
    from analysis.tables import render_all
    from pipelines.study import plan_stage
    from zoo_study.config import load_config
    from zoo_study.store import TABLES

    root = tmp_path / "root"
    cfg_file = tmp_path / "toy.toml"
    cfg_file.write_text(MICRO.format(root=root))
    # the store's catalogue lists the method's table (from the registry), with the template it declared
    assert TABLES["toy_class_counts"].template == "transfers/{job_id}/toy_class_counts.parquet"
    assert TABLES["toy_class_counts"].schema == toy.TOY_SCHEMA
    # config and plan: the planned job declares the table among its outputs
    cfg = load_config(cfg_file)
    assert cfg.transfer.methods == ["toy_counted"]
    assert main(["run", str(cfg_file), "--no-progress", "--stage", "zoo,predict,transfer"]) == 0
    (job,) = plan_stage(cfg, "transfer")
    assert job.spec["config"]["hparams"] == {"lambda": 0.25}
    assert job.outputs["toy_class_counts"] == f"transfers/{job.job_id}/toy_class_counts.parquet"
    # the transfer wrote it: 240 training images x 0.5 = 120 samples, 3 full batches of 32 per epoch, so the
    # state counted 96 labels over the 6 classes, the same counts its phase logged
    table = pq.read_table(root / job.outputs["toy_class_counts"])
    summary = pq.read_table(root / job.outputs["summary"]).to_pylist()[0]
    assert summary["method"] == "toy_counted"
    assert sum(table.column("samples").to_pylist()) == 3 * 32
    assert set(table.column("class_id").to_pylist()) <= set(range(6)) and set(table.column("stage").to_pylist()) == {0}
    # SQL through the analysis layer: its view, joined with the registry's methods view
    with connect(root) as db:
        rows = db.query("SELECT m.label, sum(c.samples) AS n FROM toy_class_counts c JOIN transfers t USING (job_id) "
                        "JOIN methods m ON m.name = t.method GROUP BY m.label").to_pylist()
        assert rows == [{"label": "Toy (counted)", "n": 96}]
        (tab2,) = render_all(db, ["tab2"])
    assert tab2.error is None and "Toy (counted)" in tab2.html  # the report's method table labels it
    capsys.readouterr()
    assert main(["sql", str(root), "SELECT count(*) AS n_rows FROM toy_class_counts"]) == 0
    assert f"{table.num_rows}" in capsys.readouterr().out
