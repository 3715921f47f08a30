"""Figs 9 and 10 end to end on micro studies: a zoo adapted to another generated dataset (other classes),
and a teacher fine-tuned on another domain (sketches) scored and used as a teacher on the photos."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.cli import main

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

TRANSFER = """
[transfer]
methods = ["kl", "kl_dp"]
pairs = "explicit"
explicit = {pairs}
epochs = 1
batch_size = 32
transfer_fraction = 0.5

[semantics]
enabled = false

[ray]
address = "local"
"""


def _run(tmp_path, name: str, text: str) -> tuple[int, object]:
    root = tmp_path / name
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(text.replace("{root}", str(root)))
    code = main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,score,transfer,report"])
    return code, root


def _rows(root, sub):
    return [pq.read_table(p).to_pylist()[0] for p in sorted((root / sub).glob("*/summary.parquet"))]


def test_a_teacher_from_another_domain_is_scored_and_teaches_on_the_study_domain(tmp_path):
    text = micro_study("domains").replace("{{root}}", "{root}") + """
[[zoo.cross_domain]]
model = "resnet10t_w16"
data = {generated = {domain = "sketch"}}
epochs = 1
""" + TRANSFER.replace("{pairs}", '[["resnet10t_w16@sketch", "mixer_p8"], ["resnet10t_w16", "mixer_p8"]]')
    code, root = _run(tmp_path, "domains", text)
    assert code == 0
    models = {r["model_id"]: r for r in (pq.read_table(p).to_pylist()[0] for p in (root / "zoo" / "models").glob("*"))}
    assert set(models) == {"resnet10t_w16", "mixer_p8", "resnet10t_w16@sketch"}
    meta = json.loads(models["resnet10t_w16@sketch"]["recipe_json"])
    assert meta["adapted"]["dataset"] == "generated[domain=sketch]" and meta["adapted"]["new_head"] is False
    assert meta["adapted"]["from"] == "resnet10t_w16" and meta["num_classes"] == 6
    pairs = pq.read_table(root / "scores" / "pairs.parquet").to_pylist()
    assert any(p["teacher"] == "resnet10t_w16@sketch" and p["student"] == "mixer_p8" for p in pairs)
    summaries = _rows(root, "transfers")
    assert {(s["teacher"], s["method"]) for s in summaries} == {
        (t, m) for t in ("resnet10t_w16@sketch", "resnet10t_w16") for m in ("kl", "kl_dp")}
    from analysis.db import connect

    with connect(root) as db:
        fig10 = db.named("fig10_cross_domain").to_pylist()
    assert {(r["teacher_domain"], r["method"]) for r in fig10} == {
        (d, m) for d in ("generated[domain=sketch]", "same domain") for m in ("kl", "kl_dp")}
    assert (root / "report" / "figures" / "fig10.png").is_file()


def test_a_zoo_adapted_to_another_dataset_runs_the_study_there(tmp_path):
    base = micro_study("other")
    # the study's data: a second generated dataset of other classes; the zoo first learns the default ones
    text = base.replace("{{root}}", "{root}").replace("n_eval = 120\n", "n_eval = 120\nclass_set = \"b\"\n") + """
[zoo.adapt]
enabled = true
mode = "linear_probe"
epochs = 1
lr = 0.01

[zoo.adapt.pretrain_data.generated]
num_superclasses = 2
classes_per_superclass = 3
image_size = 16
n_train = 240
n_eval = 120
""" + TRANSFER.replace("{pairs}", '[["resnet10t_w16", "mixer_p8"]]')
    code, root = _run(tmp_path, "other", text)
    assert code == 0
    rows = [pq.read_table(p).to_pylist()[0] for p in (root / "zoo" / "models").glob("*")]
    assert len(rows) == 2
    for r in rows:
        meta = json.loads(r["recipe_json"])
        assert meta["adapted"]["dataset"] == "generated[class_set=b]" and meta["adapted"]["new_head"] is True
        assert meta["adapted"]["settings"]["mode"] == "linear_probe" and meta["adapted"]["pretrain_data"]
    assert {s["method"] for s in _rows(root, "transfers")} == {"kl", "kl_dp"}
    from analysis.db import connect

    with connect(root) as db:
        fig9 = db.named("fig9_other_datasets").to_pylist()
    assert {r["dataset"] for r in fig9} == {"generated[class_set=b]"} and len(fig9) == 2


@pytest.mark.parametrize("extra,needle", [
    ('[[zoo.cross_domain]]\nmodel = "nope"\ndata = {generated = {domain = "sketch"}}\n', "'nope' is not a trained model"),
    ('[[zoo.cross_domain]]\nmodel = "mixer_p8"\n', "is the study's own data"),
    ('[[zoo.cross_domain]]\nmodel = "mixer_p8"\ndata = {generated = {domain = "watercolour"}}\n', "watercolour"),
    ('[zoo.adapt]\nenabled = true\n\n[[zoo.cross_domain]]\nmodel = "mixer_p8"\n'
     'data = {generated = {domain = "sketch"}}\n', "cannot be combined"),
])
def test_bad_adaptation_settings_fail_before_anything_runs(tmp_path, capsys, extra, needle):
    root = tmp_path / "bad"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(micro_study("bad").replace("{{root}}", str(root)) + extra)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(cfg), "--dry-run"])
    assert exit_.value.code == 2
    assert needle in capsys.readouterr().err
    assert not root.exists()


def test_an_imagefolder_study_names_a_teacher_fine_tuned_on_another_folder(tmp_path):
    from test_imagefolder import write_tree

    photos = write_tree(tmp_path / "photos", {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)},
                        n_train=12, n_val=6)
    dark = write_tree(tmp_path / "dark", {"red": (110, 10, 10), "green": (10, 90, 20), "blue": (15, 20, 100)},
                      n_train=12, n_val=6)
    root = tmp_path / "runs"
    cfg = tmp_path / "folders.toml"
    cfg.write_text(f"""
[study]
name = "folders"
results_root = "{root}"

[data]
kind = "imagefolder"
root = "{photos}"
raw_size = 32

[zoo]
embedded = ["resnet10t_w16", "mixer_p8"]
epochs_scale = 0.2

[[zoo.cross_domain]]
model = "resnet10t_w16"
id = "resnet10t_w16@dark"
data = {{root = "{dark}"}}
epochs = 1

[transfer]
methods = ["kl"]
pairs = "explicit"
explicit = [["resnet10t_w16@dark", "mixer_p8"]]
epochs = 1
batch_size = 8
transfer_fraction = 1.0

[semantics]
enabled = false

[ray]
address = "local"
""")
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,score,transfer"]) == 0
    row = pq.read_table(root / "zoo" / "models" / "resnet10t_w16_dark.parquet").to_pylist()[0]
    meta = json.loads(row["recipe_json"])
    assert meta["adapted"]["dataset"] == str(dark) and meta["adapted"]["new_head"] is False
    (summary,) = _rows(root, "transfers")
    assert summary["teacher"] == "resnet10t_w16@dark" and summary["n_eval"] == 18
