"""Every bad input is refused before anything runs: exit 2, one line naming the value, nothing written.

Table-driven over config values, CLI arguments and data folders. Each case runs the real CLI
(``zoo-study run`` on a micro study) with one bad setting; validation happens before Ray starts, so
each case takes milliseconds. The assertion that nothing was written covers the results root and the
folder the command ran in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.cli import main

MICRO = """
[study]
name = "micro"
results_root = "{root}"

[data.generated]
num_superclasses = 2
classes_per_superclass = 3
image_size = 16
n_train = 240
n_eval = 120

[zoo]
embedded = ["resnet10t_w16", "convnext_atto_p2", "mixer_p8"]
epochs_scale = 0.2

[transfer]
methods = ["kl", "kl_dp"]
n_pairs = 1
epochs = 1

[multi_teacher]
enabled = true
students = ["mixer_p8"]
teachers = ["resnet10t_w16", "convnext_atto_p2"]
epochs = 1

[ray]
address = "local"
"""

# (id, --set overrides or extra CLI args, text the one-line error must contain)
CONFIG_CASES = [
    ("epochs-zero", ["transfer.epochs=0"], "transfer.epochs"),
    ("epochs-float", ["transfer.epochs=1.5"], "1.5"),
    ("negative-study-seed", ["study.seed=-1"], "study.seed"),
    ("negative-transfer-seed", ["transfer.seeds=[0, -3]"], "-3"),
    ("repeated-seeds", ["transfer.seeds=[1, 1]"], "repeats a seed"),
    ("empty-seeds", ["transfer.seeds=[]"], "transfer.seeds"),
    ("unknown-method", ["transfer.methods=['kl', 'magic']"], "magic"),
    ("empty-methods", ["transfer.methods=[]"], "transfer.methods"),
    ("repeated-method", ["transfer.methods=['kl', 'kl']"], "repeats a method"),
    ("unknown-hparam-method", ["transfer.hparams.klx.lr=0.1"], "klx"),
    ("unknown-hparam", ["transfer.hparams.xe_kl.lamda=0.5"], "lamda"),
    ("hparam-out-of-range", ["transfer.hparams.xe_kl.lambda=1.5"], "lambda=1.5"),
    ("hparam-wrong-type", ["transfer.hparams.kl_topk.k=2.5"], "k=2.5"),
    ("hparam-negative-lr", ["transfer.hparams.kl.lr=-0.1"], "-0.1"),
    ("hparam-nan-lr", ["transfer.hparams.kl.lr=nan"], "nan"),
    ("hparam-lr-twice", ["transfer.hparams.kl.lr=0.1", "transfer.hparams.kl.base_lr=0.2"], "given twice"),
    ("fraction-above-one", ["transfer.transfer_fraction=1.5"], "1.5"),
    ("fraction-inf", ["transfer.transfer_fraction=inf"], "Infinity"),
    ("bad-augment", ["transfer.augment=colour"], "colour"),
    ("bad-student-mode", ["transfer.student_mode=frozen"], "frozen"),
    ("bad-pairs-mode", ["transfer.pairs=some"], "some"),
    ("explicit-without-pairs", ["transfer.pairs=explicit"], "transfer.explicit"),
    ("explicit-unknown-model", ["transfer.pairs=explicit", "transfer.explicit=[['mixer_p8', 'nobody']]"], "nobody"),
    ("grid-without-lists", ["transfer.pairs=grid"], "transfer.students"),
    ("mt-unknown-method", ["multi_teacher.method=kl_x"], "kl_x"),
    ("mt-parallel-needs-routing", ["multi_teacher.method=xe_kl"], "xe_kl"),
    ("mt-unknown-student", ["multi_teacher.students=['ghost']"], "ghost"),
    ("mt-one-teacher", ["multi_teacher.teachers=['resnet10t_w16']"], "at least 2 teachers"),
    ("mt-empty-modes", ["multi_teacher.modes=[]"], "multi_teacher.modes"),
    ("mt-bad-mode", ["multi_teacher.modes=['ensemble']"], "ensemble"),
    ("hs-unknown-method", ["hparam_search.enabled=true", "hparam_search.methods=['nope']"], "nope"),
    ("hs-empty-axis", ["hparam_search.enabled=true", "hparam_search.grid={lr = []}"], "lr"),
    ("hs-bad-key", ["hparam_search.enabled=true", "hparam_search.grid={lamda = [0.1]}"], "lamda"),
    ("hs-bad-point", ["hparam_search.enabled=true", "hparam_search.methods=['xe_kl']",
                      "hparam_search.grid={lambda = [0.5, 2.0]}"], "lambda=2.0"),
    ("hs-no-default-grid", ["hparam_search.enabled=true", "hparam_search.methods=['cd']"], "no default grid"),
    ("score-explicit-unknown", ["score.pairs=explicit", "score.explicit=[['ghost', 'mixer_p8']]"], "ghost"),
    ("score-random-without-k", ["score.pairs=random"], "score.k"),
    ("unknown-section-key", ["study.colour=1"], "study.colour"),
    ("unknown-section", ["cluster.nodes=3"], "cluster"),
    ("empty-results-root", ["study.results_root="], "study.results_root"),
    ("blank-results-root", ["study.results_root='   '"], "study.results_root"),
    ("unknown-recipe", ["zoo.embedded=['resnet10t_w16', 'resnet999']"], "resnet999"),
    ("empty-recipes", ["zoo.embedded=[]"], "zoo.embedded"),
    ("unknown-random-arch", ["zoo.random_teachers=['not_a_timm_net']"], "not_a_timm_net"),
    ("zero-epochs-scale", ["zoo.epochs_scale=0"], "zoo.epochs_scale"),
    ("bad-data-kind", ["data.kind=web"], "web"),
    ("generated-too-many-shapes", ["data.generated.num_superclasses=11"], "num_superclasses"),
    ("generated-nan-difficulty", ["data.generated.difficulty=nan"], "difficulty"),
    ("bad-device", ["study.device=tpu"], "tpu"),
    ("negative-cpus-per-job", ["ray.cpus_per_job=-1"], "cpus_per_job"),
    ("bad-set-syntax", ["transfer.epochs"], "key=value"),
    # issue 22: inputs that used to pass validation and fail after Ray started (exit 1, failures/ written)
    ("clip-encoder-not-a-folder", ["semantics.encoder='clip:/nonexistent'"], "'/nonexistent' is not a local CLIP"),
    ("talking-split-deeper-than-student", ["transfer.methods=['talking_models']", "transfer.pairs=explicit",
                                           "transfer.explicit=[['resnet10t_w16', 'convnext_atto_p2']]",
                                           "transfer.hparams.talking_models.split=4"],
     "model 'convnext_atto_p2' (convnext_atto) cannot give them: talking_models split = 4: the model (ConvNeXt) "
     "has 4 feature level(s) in timm's forward_intermediates; valid: 0 to 3"),
    ("adapt-imagefolder-without-root", ["zoo.adapt.enabled=true", "zoo.adapt.pretrain_data.kind=imagefolder"],
     "zoo.adapt.pretrain_data.kind='imagefolder' needs a dataset root"),
    ("unknown-timm-arch", ["zoo.models=[{id = 'x', source = 'timm', arch = 'resnet5000'}]"],
     "arch 'resnet5000' is not a timm architecture"),
    ("variant-lr-overflow", ["transfer.variants=[{lr_scale = 1e308}]"], "transfer.lr_scale 1e+308"),
    ("hparam-lr-beyond-sane", ["transfer.hparams.kl.lr=1e6"], "lr 1e+06"),
    # issue 22: silently accepted before
    ("repeated-variant", ["transfer.variants=[{temperature = 4.0}, {lr_scale = 0.5}, {temperature = 4.0}]"],
     "repeats a variant: [0] and [2]"),
    ("robustness-method-not-transferred", ["robustness.enabled=true", "robustness.methods=['std_kd']"],
     "robustness.methods ['std_kd']: no transfer of these methods is planned"),
    ("cache-dir-with-generated-data", ["data.cache_dir=cache"], "only ImageFolder data is cached"),
]

CLI_CASES = [
    ("unknown-stage", ["--stage", "zoo,bake"], "bake"),
    ("bad-ray-address", ["--address", "nonsense:1"], "nonsense:1"),
    # issue 22: `--stage ''` ran every stage; --bench without --dry-run started a real run; a stage planned
    # from the scores on an empty root was skipped after the root was created
    ("empty-stage", ["--stage", ""], "--stage '' names no stage"),
    ("blank-stage-list", ["--stage", " , "], "names no stage"),
    ("bench-without-dry-run", ["--bench", "bench.json"], "needs --dry-run"),
    ("transfer-stage-on-empty-root", ["--stage", "transfer"], "run stage(s) zoo, predict, score first"),
    ("robustness-stage-on-empty-root", ["--stage", "robustness", "--set", "robustness.enabled=true"],
     "run stage(s) zoo, predict, score first"),
]


def _micro(tmp_path: Path) -> Path:
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.format(root=tmp_path / "runs"))
    return cfg


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _refused(tmp_path, monkeypatch, capsys, argv: list[str], expect: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_STUDY_IMAGENET", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = _files_under(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert expect in err, err
    assert _files_under(tmp_path) == before  # nothing written: no results root, nothing in the cwd


@pytest.mark.parametrize("overrides, expect", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_is_refused(tmp_path, monkeypatch, capsys, overrides, expect):
    argv = ["run", str(_micro(tmp_path))]
    for item in overrides:
        argv += ["--set", item]
    _refused(tmp_path, monkeypatch, capsys, argv, expect)


@pytest.mark.parametrize("extra, expect", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_argument_is_refused(tmp_path, monkeypatch, capsys, extra, expect):
    _refused(tmp_path, monkeypatch, capsys, ["run", str(_micro(tmp_path)), *extra], expect)


def test_missing_config_file_is_refused(tmp_path, monkeypatch, capsys):
    _refused(tmp_path, monkeypatch, capsys, ["run", str(tmp_path / "nope.toml")], "nope.toml")


def test_invalid_toml_is_refused(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1\n")
    _refused(tmp_path, monkeypatch, capsys, ["run", str(bad)], "not valid TOML")


def test_results_root_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").write_text("not a folder")
    _refused(tmp_path, monkeypatch, capsys, ["run", str(_micro(tmp_path))], "runs")


@pytest.mark.parametrize("case", ["missing-root", "root-is-file", "no-val-split", "env-unset"])
def test_bad_imagefolder_root_is_refused(tmp_path, monkeypatch, capsys, case):
    monkeypatch.delenv("ZOO_STUDY_IMAGENET", raising=False)
    data = tmp_path / "data"
    if case == "root-is-file":
        data.write_text("x")
    elif case == "no-val-split":
        (data / "train" / "a").mkdir(parents=True)
    argv = ["run", str(_micro(tmp_path)), "--set", "data.kind=imagefolder"]
    if case != "env-unset":
        argv += ["--set", f"data.root={data}"]
    expect = {"missing-root": "is not a folder", "root-is-file": "is not a folder", "no-val-split": "val/",
              "env-unset": "ZOO_STUDY_IMAGENET"}[case]
    _refused(tmp_path, monkeypatch, capsys, argv, expect)


def test_the_table_has_at_least_forty_cases():
    assert len(CONFIG_CASES) + len(CLI_CASES) + 3 + 4 >= 40


def test_non_finite_and_empty_values_never_show_a_traceback(tmp_path, monkeypatch, capsys):
    # a sweep over every numeric key of the transfer section with values pydantic must refuse
    for key in ("epochs", "batch_size", "eval_batch_size", "n_pairs", "eval_every"):
        for value in ("-1", "0", "nan", "'three'"):
            monkeypatch.chdir(tmp_path)
            with pytest.raises(SystemExit) as info:
                main(["run", str(_micro(tmp_path)), "--set", f"transfer.{key}={value}"])
            err = capsys.readouterr().err
            assert info.value.code == 2 and "Traceback" not in err and key in err, (key, value, err)
    assert not (tmp_path / "runs").exists()
    assert os.listdir(tmp_path) == ["micro.toml"]


def _no_gpu(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("case", ["device-cuda", "gpus-per-job", "cpus-per-job", "cpus-per-job-over-num-cpus"])
def test_local_run_beyond_this_machine_is_refused(tmp_path, monkeypatch, capsys, case):
    # on a machine without a GPU (made so here); Ray used to skip every such job, or the first job failed
    _no_gpu(monkeypatch)
    cpus = os.cpu_count() or 1
    overrides, expect = {
        "device-cuda": (["study.device=cuda"], "study.device='cuda' but this machine has no usable CUDA GPU"),
        "gpus-per-job": (["ray.gpus_per_job=1"], "ray.gpus_per_job=1 is more than this machine's 0 GPU(s)"),
        "cpus-per-job": ([f"ray.cpus_per_job={cpus + 1}"], f"ray.cpus_per_job={cpus + 1} is more than this run's "
                                                            f"{cpus} CPU(s) (os.cpu_count())"),
        "cpus-per-job-over-num-cpus": (["ray.num_cpus=2", "ray.cpus_per_job=3"], "this run's 2 CPU(s) (ray.num_cpus)"),
    }[case]
    argv = ["run", str(_micro(tmp_path)), "--set", "ray.address="]  # a local Ray instance
    for item in overrides:
        argv += ["--set", item]
    _refused(tmp_path, monkeypatch, capsys, argv, expect)


def test_machine_checks_are_left_to_a_cluster(tmp_path, monkeypatch, capsys):
    # joining a cluster, its nodes decide: validation passes and the run gets as far as the (bad) address
    _no_gpu(monkeypatch)
    argv = ["run", str(_micro(tmp_path)), "--set", "study.device=cuda", "--set", "ray.gpus_per_job=1",
            "--address", "nonsense:1"]
    _refused(tmp_path, monkeypatch, capsys, argv, "nonsense:1")


def _imagefolder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split / "a").mkdir(parents=True)
    return data


@pytest.mark.parametrize("case", ["is-a-file", "under-a-file", "read-only-mount"])
def test_unwritable_cache_dir_is_refused(tmp_path, monkeypatch, capsys, case):
    # used to fail in the first job that built the cache, after the zoo had trained
    data = _imagefolder(tmp_path)
    (tmp_path / "cache-file").write_text("x")
    cache, expect = {"is-a-file": (tmp_path / "cache-file", "cache-file is a file, not a folder"),
                     "under-a-file": (tmp_path / "cache-file" / "sub", "cache-file is a file, not a folder"),
                     "read-only-mount": (Path("/proc/zoo-study-cache"), "cannot write in /proc")}[case]
    argv = ["run", str(_micro(tmp_path)), "--set", "data.kind=imagefolder", "--set", f"data.root={data}",
            "--set", f"data.cache_dir={cache}"]
    _refused(tmp_path, monkeypatch, capsys, argv, expect)


def test_writable_cache_dir_passes_and_the_probe_leaves_nothing(tmp_path, monkeypatch, capsys):
    data = _imagefolder(tmp_path)
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(_micro(tmp_path)), "--set", "data.kind=imagefolder", "--set", f"data.root={data}",
                 "--set", f"data.cache_dir={tmp_path / 'cache' / 'new'}", "--dry-run"])
    assert code == 0, capsys.readouterr().err
    assert os.listdir(tmp_path / "cache") == [] and not (tmp_path / "runs").exists()


def test_dry_run_plans_for_another_machine_and_warns(tmp_path, monkeypatch, capsys):
    # a plan made on a laptop for a GPU cluster, or before the scores exist, is printed; what a run here and
    # now would refuse is one warning line each, and nothing is written
    _no_gpu(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(_micro(tmp_path)), "--set", "ray.gpus_per_job=1", "--stage", "transfer", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and "transfer" in captured.out
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("zoo-study: warning: a run now would be refused: ") for w in warnings)
    assert "run stage(s) zoo, predict, score first" in warnings[0] and "ray.gpus_per_job=1" in warnings[1]
    assert os.listdir(tmp_path) == ["micro.toml"]
