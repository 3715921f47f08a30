"""The accelerator-hours estimate of --dry-run --bench, on hand-computed studies.

A tiny ImageFolder study (classes a: 130 and b: 140 train images, 3 + 2 eval images; the files are empty:
planning only counts them), three timm models and a bench file with known rates. Every expected number is
computed in the test from the estimate's formula (pipelines/estimate.py's docstring).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.jobs import Job

ARCH = {"s": "resnet18.a1_in1k", "t": "resnet34.a1_in1k", "u": "resnet50.a1_in1k"}
RATES = {"s": (2.0, 8.0), "t": (1.0, 4.0), "u": (1.0, 5.0)}  # (train img/s, eval img/s)
DECODE, WORKERS, STARTUP = 5.0, 2.0, 10.0  # the bench file's overheads: decode 5 img/s x 2 workers, 10 s a task
N_EVAL = 3 + 2
E = 2  # epochs
TOL = 0.06  # the total is printed to 0.1 s


@pytest.fixture
def study(tmp_path):
    for split, counts in (("train", {"a": 130, "b": 140}), ("val", {"a": 3, "b": 2})):
        for cls, n in counts.items():
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{cls}_{i}.JPEG").touch()
    return tmp_path


def _bench(tmp_path, names=lambda m: ARCH[m], models=("s", "t", "u"), overheads=True, extra=()) -> str:
    rows = [{"model": names(m), "train_img_s": RATES[m][0], "eval_img_s": RATES[m][1]} for m in models]
    data = {"device": "cuda", "device_name": "hand GPU", "models": rows + list(extra)}
    if overheads:
        data.update(decode_img_s=DECODE, decode_workers=WORKERS, startup_s=STARTUP)
    path = tmp_path / f"bench{len(list(tmp_path.glob('bench*.json')))}.json"
    path.write_text(json.dumps(data))
    return str(path)


def _config(tmp_path, *, methods=("kl",), pairs=(("t", "s"),), per_class=1, pack_size=1, pack_students=1,
            cache: bool | None = False) -> str:
    models = "".join(f'[[zoo.models]]\nid = "{m}"\narch = "{a}"\n' for m, a in ARCH.items())
    text = f"""
[study]
results_root = "{tmp_path / 'r'}"
[data]
kind = "imagefolder"
root = "{tmp_path / 'data'}"
{'' if cache is None else f'cache_dir = "{tmp_path / "cache" if cache else "none"}"'}
[zoo]
embedded = "none"
{models}
[transfer]
methods = {json.dumps(list(methods))}
pairs = "explicit"
explicit = {json.dumps([list(p) for p in pairs])}
epochs = {E}
batch_size = 4
eval_every = 1
transfer_per_class = {per_class}
[ray]
pack_size = {pack_size}
pack_students = {pack_students}
"""
    path = tmp_path / "study.toml"
    path.write_text(text)
    return str(path)


def _dry_run(capsys, config: str, bench: str) -> tuple[float, str]:
    """The printed total in seconds (hours when no seconds are printed), and the output."""
    assert main(["run", config, "--stage", "transfer", "--dry-run", "--bench", bench]) == 0
    out = capsys.readouterr().out
    m = re.search(r"estimated accelerator time[^:]*: ([\d.]+) h(?: \(([\d.]+) s\))?", out)
    assert m, out
    return (float(m.group(2)) if m.group(2) else float(m.group(1)) * 3600.0), out


def _one_kl_job(i_epoch: float, *, decode_rate: float = DECODE * WORKERS, startup: float = STARTUP) -> float:
    """kl, t -> s, alone: train + teacher forward + eval + decode (batches, one eval pass per epoch) + start-up."""
    train = E * i_epoch / RATES["s"][0]
    shared = E * i_epoch / RATES["t"][1]
    evals = E * N_EVAL / RATES["s"][1]
    decode = (E * i_epoch + E * N_EVAL) / decode_rate
    return train + shared + evals + decode + startup


def test_transfer_per_class_sets_the_imagefolder_transfer_set(study, capsys):
    # 1 per class: 1 x 2 classes = 2 images <= batch 4 -> one batch of 2 per epoch
    one, _ = _dry_run(capsys, _config(study, per_class=1), _bench(study))
    assert one == pytest.approx(_one_kl_job(1 * 2), abs=TOL)  # 2 + 1 + 1.25 + 1.4 + 10 = 15.65 s
    # 130 per class: 260 images > batch 4 -> 65 full batches of 4 = 260 images per epoch
    many, _ = _dry_run(capsys, _config(study, per_class=130), _bench(study))
    assert many == pytest.approx(_one_kl_job(260 // 4 * 4), abs=TOL)  # 260 + 130 + 1.25 + 53 + 10 = 454.25 s
    from pipelines.estimate import DataSizes, Overheads, epoch_images, load_bench, transfer_images

    sizes = DataSizes((130, 140), N_EVAL, decoded=True)
    bench = load_bench(_bench(study))
    cfg = {"transfer_per_class": 1, "transfer_fraction": 0.1}
    assert transfer_images(cfg, sizes) == 2 and transfer_images({**cfg, "transfer_per_class": 130}, sizes) == 260
    # without transfer_per_class: the stratified fraction of each class, round half up (13 + 14)
    assert transfer_images({"transfer_per_class": None, "transfer_fraction": 0.1}, sizes) == 13 + 14
    assert epoch_images(6, 4) == 4 and epoch_images(2, 4) == 2  # full batches only when n > batch
    assert bench.overheads == Overheads(DECODE, WORKERS, STARTUP)


def test_untagged_tagged_and_id_names_give_the_same_estimate(study, capsys):
    config = _config(study, per_class=1)
    expected = _one_kl_job(2)
    for names in (lambda m: ARCH[m], lambda m: ARCH[m].split(".")[0], lambda m: m):
        total, out = _dry_run(capsys, config, _bench(study, names))
        assert total == pytest.approx(expected, abs=TOL) and "missing" not in out
    # a row of another pretrained tag of the same architecture answers too; an exact name wins over it
    other_tag = _bench(study, lambda m: ARCH[m].split(".")[0] + ".other_tag")
    assert _dry_run(capsys, config, other_tag)[0] == pytest.approx(expected, abs=TOL)
    # a model without a row: its jobs are left out and the model is named
    total, out = _dry_run(capsys, config, _bench(study, models=("s", "u")))
    assert total == 0.0 and "1 job(s) left out: model(s) missing from" in out and out.rstrip().endswith(": t")


def test_a_pack_charges_its_shared_forwards_once(study, capsys):
    methods = ("kl", "kl_dp", "xe_kl")  # kl_dp needs the frozen student (registry: needs_frozen)
    i = 2  # 1 per class: one batch of 2 a epoch
    train = 3 * E * i / RATES["s"][0]
    evals = 3 * E * N_EVAL / RATES["s"][1]
    # one task: the teacher and the frozen student forward once per batch; batches and eval decoded once
    packed = (train + evals + E * i * (1 / RATES["t"][1] + 1 / RATES["s"][1])
              + (E * i + E * N_EVAL) / (DECODE * WORKERS) + STARTUP)  # 6 + 3.75 + 1.5 + 1.4 + 10
    total, out = _dry_run(capsys, _config(study, methods=methods, pack_size=16), _bench(study))
    assert total == pytest.approx(packed, abs=TOL) and "in 1 task(s)" in out
    # alone: three tasks, each with its teacher forward, decode and start-up; kl_dp's frozen forward
    alone = (train + evals + 3 * E * i / RATES["t"][1] + E * i / RATES["s"][1]
             + 3 * (E * i + E * N_EVAL) / (DECODE * WORKERS) + 3 * STARTUP)  # 6 + 3.75 + 3.5 + 4.2 + 30
    total, out = _dry_run(capsys, _config(study, methods=methods, pack_size=1), _bench(study))
    assert total == pytest.approx(alone, abs=TOL) and "in 3 task(s)" in out
    # two students of one teacher in one pack (pack_students 2): one teacher forward, a frozen forward and
    # an eval pass (decoded) per student
    two = (E * i / RATES["s"][0] + E * i / RATES["u"][0] + E * N_EVAL / RATES["s"][1] + E * N_EVAL / RATES["u"][1]
           + E * i * (1 / RATES["t"][1] + 1 / RATES["s"][1] + 1 / RATES["u"][1])
           + (E * i + 2 * E * N_EVAL) / (DECODE * WORKERS) + STARTUP)  # 6 + 3.25 + 2.3 + 2.4 + 10
    config = _config(study, methods=("kl_dp",), pairs=(("t", "s"), ("t", "u")), pack_size=16, pack_students=2)
    assert _dry_run(capsys, config, _bench(study))[0] == pytest.approx(two, abs=TOL)


def test_the_frozen_forward_follows_the_registry_flag_not_the_name(study, capsys):
    from zoo_study.methods import register_method, unregister_method
    from zoo_study.methods.builtin import kl

    register_method("kl_dp_noanchor", label="KL (no anchor)")(kl)  # a kl_dp-like name, no frozen copy
    try:
        total, _ = _dry_run(capsys, _config(study, methods=("kl_dp_noanchor",)), _bench(study))
    finally:
        unregister_method("kl_dp_noanchor")
    assert total == pytest.approx(_one_kl_job(2), abs=TOL)


def test_decode_and_start_up(study, capsys):
    # defaults when the bench file names none: 150 img/s on 1 worker, 30 s per task
    total, _ = _dry_run(capsys, _config(study), _bench(study, overheads=False))
    assert total == pytest.approx(_one_kl_job(2, decode_rate=150.0 * 1, startup=30.0), abs=TOL)
    # with the decoded-image cache: the transfer set (2 images) and the eval split (5) decoded once
    config, bench = _config(study, cache=True), _bench(study)
    total, out = _dry_run(capsys, config, bench)
    train, shared, evals = E * 2 / RATES["s"][0], E * 2 / RATES["t"][1], E * N_EVAL / RATES["s"][1]
    decode = (2 + N_EVAL) / (DECODE * WORKERS)
    assert total == pytest.approx(train + shared + evals + decode + STARTUP, abs=TOL)  # 2 + 1 + 1.25 + 0.7 + 10
    # the breakdown, term by term
    from pipelines.estimate import data_sizes, estimate, load_bench
    from pipelines.study import plan_stage
    from zoo_study.config import load_config

    cfg = load_config(config)
    est = estimate(plan_stage(cfg, "transfer"), load_bench(bench), data_sizes(cfg))
    terms = (est.train_s, est.shared_s, est.eval_s, est.decode_s, est.startup_s, est.predict_s)
    assert terms == pytest.approx((train, shared, evals, decode, STARTUP, 0.0))


def _job(method: str, mode: str, teachers: tuple[str, ...]) -> Job:
    config = {"method": method, "mode": mode, "epochs": 2, "eval_every": 2, "batch_size": 1000,
              "transfer_fraction": 0.5, "transfer_per_class": None}
    spec = {"student": {"model_id": "s", "spec": {}}, "teachers": [{"model_id": t, "spec": {}} for t in teachers],
            "config": config}
    return Job("multi_teacher", spec, {"summary": f"transfers/{method}{mode}/summary.parquet"})


def test_multi_teacher_modes_by_hand():
    from pipelines.estimate import Bench, DataSizes, Overheads, estimate

    bench = Bench({"s": {"train_img_s": 100.0, "eval_img_s": 400.0}, "t": {"train_img_s": 50.0, "eval_img_s": 200.0},
                   "u": {"train_img_s": 50.0, "eval_img_s": 100.0}}, "cpu", Overheads(startup_s=7.0))
    sizes = DataSizes((1000, 1000), 4000)  # generated data: nothing decoded; transfer set 500 + 500 = 1000
    # sequential: one phase per teacher, each 2 epochs of 1000 images, one evaluation (eval_every 2)
    est = estimate([_job("kl_dp", "sequential", ("t", "u"))], bench, sizes)
    assert est.train_s == pytest.approx(2 * (2 * 1000 / 100))
    assert est.eval_s == pytest.approx(2 * (1 * 4000 / 400))
    assert est.shared_s == pytest.approx(2 * 1000 * (1 / 200 + 1 / 400) + 2 * 1000 * (1 / 100 + 1 / 400))
    assert (est.decode_s, est.startup_s, est.tasks) == (0.0, 7.0, 1)
    # soup: the same phases, then one evaluation of the soup; parallel: one phase with both teachers
    soup = estimate([_job("kl_dp", "soup", ("t", "u"))], bench, sizes)
    assert soup.eval_s == pytest.approx(2 * 10 + 4000 / 400)
    par = estimate([_job("kl_dp", "parallel", ("t", "u"))], bench, sizes)
    assert par.train_s == pytest.approx(2 * 1000 / 100)
    assert par.shared_s == pytest.approx(2 * 1000 * (1 / 200 + 1 / 100 + 1 / 400))


def test_dry_run_prints_the_estimate(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    rows = [{"model": m, "train_img_s": 1000.0, "eval_img_s": 4000.0} for m in
            ("vit_p8_d96", "resnet10t_w24_ls", "convnext_atto_p2", "mixer_p8")]
    bench.write_text(json.dumps({"device": "cuda", "device_name": "test GPU", "models": rows}))
    code = main(["run", "--dry-run", "--bench", str(bench), "--set", f"study.results_root={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "estimated accelerator time" in out and "test GPU" in out and "start-up" in out
    assert "planned after the score stage" in out  # the demo's sampled pairs are not counted yet
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, says", [
    ("{}", "not a bench_gpu.py JSON file"),
    ('{"models": [{"model": "s", "train_img_s": 0, "eval_img_s": 1}]}', "train_img_s=0 must be a number > 0"),
    ('{"models": [], "startup_s": -1}', "startup_s"),
])
def test_bad_bench_file_is_refused(tmp_path, capsys, content, says):
    bad = tmp_path / "b.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["run", "--dry-run", "--bench", str(bad), "--set", f"study.results_root={tmp_path / 'r'}"])
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_an_out_of_memory_row_counts_as_missing(study, capsys):
    oom = {"model": ARCH["t"], "oom": True, "batch": 256, "train_img_s": None, "eval_img_s": None}
    total, out = _dry_run(capsys, _config(study), _bench(study, models=("s", "u"), extra=[oom]))
    assert total == 0.0 and out.rstrip().endswith(": t")


def test_rows_of_random_and_adapted_models():
    from pipelines.estimate import Bench

    bench = Bench({"resnet10t_w16": {"eval_img_s": 1.0}, "resnet10t": {"eval_img_s": 2.0},
                   "resnet50": {"eval_img_s": 3.0}}, "cpu")
    recipe_random = {"model_id": "random__resnet10t_w16",
                     "spec": {"arch": "resnet10t", "model_kwargs": {"channels": [16]}}}
    assert bench.row(recipe_random)["eval_img_s"] == 1.0  # its recipe's row, not timm's full-width resnet10t
    timm_random = {"model_id": "random__resnet50", "spec": {"arch": "resnet50", "model_kwargs": {}}}
    assert bench.row(timm_random)["eval_img_s"] == 3.0
    embedded = {"model_id": "resnet10t_w32", "spec": {"arch": "resnet10t", "model_kwargs": {"channels": [32]}}}
    assert bench.row(embedded) is None  # another width: no row rather than a wrong one
    adapted = {"model_id": "r50@sketch", "spec": {"base": {"model_id": "r50", "spec": {"arch": "resnet50.a1_in1k"}}}}
    assert bench.row(adapted)["eval_img_s"] == 3.0  # an adapted model runs as its base


def test_a_bench_measured_at_another_batch_is_said(study, capsys):
    bench = json.loads(Path(_bench(study)).read_text())
    path = study / "bench_b256.json"
    path.write_text(json.dumps({**bench, "batch": 256}))
    _, out = _dry_run(capsys, _config(study), str(path))
    assert "the rates were measured at batch 256, the jobs train at batch 4" in out
    path.write_text(json.dumps({**bench, "batch": 4}))
    assert "measured at batch" not in _dry_run(capsys, _config(study), str(path))[1]


def test_the_image_cache_is_on_by_default_for_imagefolder_data(study, capsys, monkeypatch):
    """data.cache_dir unset means the node-local default cache, not on-the-fly decoding: the estimate
    charges each image's decode once, as with an explicit folder."""
    monkeypatch.setenv("ZOO_STUDY_CACHE", str(study / "default_cache"))
    default, _ = _dry_run(capsys, _config(study, per_class=130, cache=None), _bench(study))
    explicit, _ = _dry_run(capsys, _config(study, per_class=130, cache=True), _bench(study))
    off, _ = _dry_run(capsys, _config(study, per_class=130, cache=False), _bench(study))
    assert default == pytest.approx(explicit) and off > default


def test_the_shipped_imagenet_10pct_estimate_by_hand(tmp_path, capsys, monkeypatch):
    """`imagenet_10pct.toml --dry-run --bench` on an ImageNet-style tree of the 1,000 WordNet ids (1 train
    and 1 val file each: planning only counts them), every paper model at 500 train / 2,000 eval img/s.
    By hand: Table 5's 20 students x 20 teachers share one model, so 399 pairs x 6 methods = 2,394 transfers,
    one pack of 6 per pair; 130 images x 1,000 classes = 130,000 per transfer set, 507 full batches of 256 =
    129,792 images per epoch, 20 epochs; eval every epoch over the 1,000 val images."""
    from zoo_study.zoo.catalog import paper_models

    from zoo_study.data.imagefolder import _imagenet_names

    names, index = _imagenet_names()
    wnids = sorted(index, key=index.get)
    assert len(wnids) == 1000
    for split in ("train", "val"):
        for w in wnids:
            d = tmp_path / "imagenet" / split / w
            d.mkdir(parents=True)
            (d / "a.JPEG").touch()
    rows = [r for r in paper_models() if r["study"] == "imagenet_10pct"]
    students = {r["timm_name"] for r in rows if r["role"] == "student"}
    teachers = {r["timm_name"] for r in rows if r["role"] == "teacher"}
    train_r, eval_r, startup = 500.0, 2000.0, 30.0
    models = sorted(students | teachers | {"resnet50"})
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"device": "cuda", "device_name": "hand GPU", "startup_s": startup,
                                 "models": [{"model": m, "train_img_s": train_r, "eval_img_s": eval_r} for m in models]}))
    monkeypatch.setenv("ZOO_STUDY_CACHE", str(tmp_path / "cache"))
    cfg = str(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "imagenet_10pct.toml")
    argv = ["run", cfg, "--dry-run", "--bench", str(bench), "--stage", "transfer",
            "--set", f"study.results_root={tmp_path / 'r'}", "--set", f"data.root={tmp_path / 'imagenet'}"]
    # transfer pairs of "paper" are known without scores; the transfer stage alone is estimated
    assert main(argv) == 0
    out = capsys.readouterr().out
    pairs = sum(1 for s in students for t in teachers if s != t)
    members, packs, epochs, per_epoch, n_eval = 6 * pairs, pairs, 20, 507 * 256, 1000
    assert (pairs, members) == (399, 2394)
    train_h = members * epochs * per_epoch / train_r / 3600
    eval_h = members * epochs * n_eval / eval_r / 3600
    # per pack: the teacher forward on every batch, and one frozen-student forward (kl_dp, kl_dp_unsup need it)
    shared_h = packs * 2 * epochs * per_epoch / eval_r / 3600
    startup_h = packs * startup / 3600
    m = re.search(r"train ([\d.]+) h, eval ([\d.]+) h, shared forwards \(teacher, frozen student; once per pack\) "
                  r"([\d.]+) h, predict ([\d.]+) h, decode ([\d.]+) h, start-up ([\d.]+) h", out)
    assert m, out
    got = [float(g) for g in m.groups()]
    assert got[0] == pytest.approx(train_h, abs=0.006)  # 3,452.5 h
    assert got[1] == pytest.approx(eval_h, abs=0.006)
    assert got[2] == pytest.approx(shared_h, abs=0.006)
    assert got[5] == pytest.approx(startup_h, abs=0.006)
    assert f"({members} job(s) in {packs} task(s))" in out
