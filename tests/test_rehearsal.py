"""The real-shape rehearsal (issue 21, item 1): tiny-width instances of real timm architectures with
1,000-class heads and their own pretrained configs, local checkpoints (safetensors and a ``.pth`` with a
``state_dict`` key), an ImageNet-style JPEG tree with odd files, through the pipeline as a user runs it:
predict -> score -> every registered transfer method -> multi-teacher -> report, with and without the
decoded-image cache.

Why: the embedded zoo's 16-32 px models cannot show what breaks at real shapes (NHWC maps, prefix
tokens, feature_info names, 256-px / 0.9-crop geometry). Each defect found this way is its own test or
parametrisation (Swin/VOLO NHWC maps, PiT tokens, Twins/CoaT split points, a pack member's failure
spreading to its pack, timm-exact preprocessing without the cache, a class subset's class count), so a
regression names the one thing that broke.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers.rehearsal import (ARCHS, BY_ID, build_model, eval_files, make_tree, study_toml, timm_probs,
                               write_checkpoints)
from pipelines.cli import main
from zoo_study.methods import method_names, register_method, unregister_method
from zoo_study.methods.registry import get_method

from timm.data import resolve_data_config

pytestmark = [pytest.mark.timeout(900)]

IDS = [a.model_id for a in ARCHS]
MAP_METHODS = [m for m in method_names() if get_method(m).needs_maps]
LOGIT_METHODS = [m for m in method_names() if m not in MAP_METHODS]
UNCACHED_METHODS = ["kl", "crd"]


# ------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The JPEG tree and the checkpoints, once per module."""
    base = tmp_path_factory.mktemp("rehearsal")
    return {"base": base, "tree": make_tree(base / "imagenet"), "ckpt": write_checkpoints(base / "checkpoints")}


def _sample_input(model: torch.nn.Module) -> torch.Tensor:
    cfg = resolve_data_config({}, model=model)
    return torch.randn(2, *cfg["input_size"], generator=torch.Generator().manual_seed(0))


def test_the_archs_keep_their_own_data_configs():
    """The tiny widths change no geometry: each model's input size, crop and mean are timm's own."""
    cfgs = {a.model_id: resolve_data_config({}, model=build_model(a)) for a in ARCHS}
    assert cfgs["mobilevit"]["input_size"] == (3, 256, 256) and cfgs["mobilevit"]["crop_pct"] == 0.9
    assert cfgs["mobilevit"]["mean"] == (0.0, 0.0, 0.0)
    assert cfgs["volo"]["crop_pct"] == 0.96 and cfgs["resnet"]["crop_pct"] == 0.95
    assert all(build_model(a).num_classes == 1000 for a in ARCHS)


# --------------------------------------------------------------------------------- feature-map shapes
@pytest.mark.parametrize("arch", IDS)
def test_last_map_has_num_features_channels_on_a_grid(arch):
    """The map AMTML-KD and Talking Models read: [B, num_features, H, W] with a real grid (H * W > 1), not
    Swin's NHWC read as 7 channels or PiT's class token as a 1x1 map."""
    from zoo_study.transfer.loop import forward_parts

    model = build_model(BY_ID[arch])
    with torch.no_grad():
        _, _, grid = forward_parts(model, _sample_input(model), grid=True)
    assert grid.dim() == 4 and grid.shape[1] == model.num_features, tuple(grid.shape)
    assert grid.shape[2] * grid.shape[3] > 1, tuple(grid.shape)


@pytest.mark.parametrize("arch", IDS)
def test_levels_have_feature_info_channels(arch):
    """AMTML-KD's multi-group hints: the last two levels' channels are feature_info's."""
    from zoo_study.transfer.loop import forward_levels

    model = build_model(BY_ID[arch])
    with torch.no_grad():
        _, _, _, levels = forward_levels(model, _sample_input(model), 2)
    assert [t.shape[1] for t in levels] == [f["num_chs"] for f in model.feature_info][-2:]


@pytest.mark.parametrize("arch", IDS)
def test_split_state_has_feature_info_channels_and_grid(arch):
    """Talking Models' split-1 state: the module found by the probe outputs feature_info[-2]'s channels on
    the input / reduction grid, read in its own format (NHWC for Swin and VOLO, tokens for ViTs)."""
    from zoo_study.transfer.feature_maps import split_point
    from zoo_study.transfer.talking import _run_with_state, _state_tensor

    model = build_model(BY_ID[arch])
    x = _sample_input(model)
    info = model.feature_info[-2]
    with torch.no_grad():
        where = split_point(model, x, 1)
        _, out = _run_with_state(model, where, x, None)
    grid = where.fmt.grid(_state_tensor(out))
    side = x.shape[-1] // info["reduction"]
    assert tuple(grid.shape[1:]) == (info["num_chs"], side, side) == where.shape


# ------------------------------------------------------------------------------------- the pipeline
def _run(inputs: dict, name: str, *, cached: bool, stages: str | None = None, **kw) -> tuple[int, Path]:
    root = inputs["base"] / name
    cfg = inputs["base"] / f"{name}.toml"
    cache = inputs["base"] / "cache" if cached else None
    cfg.write_text(study_toml(name, root, inputs["tree"], inputs["ckpt"], cache_dir=cache, **kw))
    argv = ["run", str(cfg), "--no-progress"] + (["--stage", stages] if stages else [])
    return main(argv), root


def _rows(root: Path, folder: str) -> list[dict]:
    return [pq.read_table(p).to_pylist()[0] for p in sorted((root / folder).glob("*/summary.parquet"))]


def _failures(root: Path) -> list[dict]:
    path = root / "failures"
    return pq.read_table(path).to_pylist() if path.exists() else []


MULTI = """
[multi_teacher]
enabled = true
students = ["deit"]
teachers = ["resnet", "swin", "mobilevit"]
modes = ["sequential", "parallel", "soup"]
method = "kl_dp"
epochs = 1
single_baselines = false
"""


@pytest.fixture(scope="module")
def cached_run(inputs) -> tuple[int, Path]:
    """The whole study with the cache: every logit / feature method on a cycle of the 9 archs (each one
    student once and teacher once), packed per pair; multi-teacher (three modes); report."""
    return _run(inputs, "cached", cached=True, methods=LOGIT_METHODS, extra=MULTI)


@pytest.fixture(scope="module")
def uncached_run(inputs) -> tuple[int, Path]:
    """The same without ``data.cache_dir`` (lazy decoding): one pair, a logit and a feature method, the report."""
    return _run(inputs, "uncached", cached=False, methods=UNCACHED_METHODS, pairs=[("swin", "mobilevit")])


@pytest.mark.slow
def test_every_logit_method_runs_on_every_arch_as_student_and_teacher(cached_run):
    code, root = cached_run
    assert _failures(root) == [] and code == 0
    every = _rows(root, "transfers")
    rows = [r for r in every if r["study_part"] == "transfer"]
    assert {(r["method"], r["student"]) for r in rows} == {(m, s) for m in LOGIT_METHODS for s in IDS}
    assert {r["teacher"] for r in rows} == set(IDS)
    assert all(r["n_eval"] == 6 and math.isfinite(r["acc_last"]) for r in rows)
    multi = [r for r in every if r["study_part"] == "multi_teacher"]
    assert {r["mode"] for r in multi} == {"sequential", "parallel", "soup"}
    assert any(root.rglob("*.html")), "the report was not written"


@pytest.mark.slow
def test_the_uncached_study_runs_to_the_report(uncached_run):
    code, root = uncached_run
    assert _failures(root) == [] and code == 0
    assert {r["method"] for r in _rows(root, "transfers")} == set(UNCACHED_METHODS)
    assert any(root.rglob("*.html")), "the report was not written"


def _check_predictions(inputs: dict, root: Path) -> None:
    files = eval_files(inputs["tree"])
    for spec in ARCHS:
        rows = pq.read_table(root / "predictions" / f"model={spec.model_id}.parquet").to_pylist()
        rows.sort(key=lambda r: r["sample_id"])
        probs = timm_probs(spec, inputs["ckpt"][spec.model_id], files)
        assert [r["pred"] for r in rows] == probs.argmax(1).tolist(), spec.model_id
        assert [r["topk"] for r in rows] == np.argsort(-probs, 1, kind="stable")[:, :5].tolist(), spec.model_id
        np.testing.assert_allclose([r["p_max"] for r in rows], probs.max(1), atol=1e-4, err_msg=spec.model_id)


@pytest.mark.slow
def test_cached_predictions_equal_timms_eval_transform(inputs, cached_run):
    _check_predictions(inputs, cached_run[1])


@pytest.mark.slow
def test_uncached_predictions_equal_timms_eval_transform(inputs, uncached_run):
    _check_predictions(inputs, uncached_run[1])


@pytest.mark.slow
def test_a_class_subset_of_imagenet_counts_its_own_classes(cached_run):
    """Three WordNet folders are 3 of ImageNet's 1,000 classes: flips can only fall in those 3, so the
    pair's class count (and Fig 1b's uniform entropy, ln 3) is 3, not the largest label + 1 (which the
    old code gave) and not the 1,000 of the models' heads."""
    pairs = pq.read_table(cached_run[1] / "scores" / "pairs.parquet").to_pylist()
    assert pairs and {r["num_classes"] for r in pairs} == {3}
    assert all(r["entropy"] is None or r["entropy"] <= np.log(3) + 1e-9 for r in pairs)


# ---------------------------------------------------------------------- map methods, one arch at a time
@pytest.mark.slow
@pytest.mark.parametrize("arch", IDS)
def test_map_methods_with_the_arch_as_student_and_as_teacher(inputs, arch):
    """AMTML-KD and Talking Models (split 1) with ``arch`` on both sides, each transfer its own job."""
    other = "convnext" if arch == "resnet" else "resnet"
    code, root = _run(inputs, f"maps_{arch}", cached=True, stages="zoo,predict,transfer", methods=MAP_METHODS,
                      pairs=[(other, arch), (arch, other)], pack_size=1)
    assert [f["error"] for f in _failures(root)] == [] and code == 0
    assert len(_rows(root, "transfers")) == 2 * len(MAP_METHODS)


# -------------------------------------------------------------------------- one member's failure is its own
@pytest.fixture()
def raising_method():
    @register_method("raises_in_pack", label="Raises")
    def raises(inp, p):
        """An exception (not a NaN loss) at the first step."""
        raise RuntimeError("raises_in_pack: injected failure")

    yield "raises_in_pack"
    unregister_method("raises_in_pack")


@pytest.mark.slow
def test_a_raising_pack_member_fails_only_itself(inputs, raising_method):
    code, root = _run(inputs, "pack_failure", cached=True, stages="zoo,predict,transfer",
                      methods=["kl", raising_method, "xe_kl"], pairs=[("twins", "swin")])
    failures = _failures(root)
    assert code == 1 and len(failures) == 1 and "injected failure" in failures[0]["error"]
    assert {r["method"] for r in _rows(root, "transfers")} == {"kl", "xe_kl"}
    assert json.loads(failures[0]["spec_json"])["config"]["method"] == raising_method


# ------------------------------------------------------------------------------ the config a user runs
def test_the_shipped_rehearsal_config_plans_against_a_made_tree(tmp_path, monkeypatch, capsys):
    """``pipelines/configs/rehearsal.toml`` names the builders' archs and widths, and validates and plans
    against the tree and checkpoints ``python -m tests.helpers.rehearsal make-tree rehearsal`` writes."""
    import tomllib

    from helpers.rehearsal import main as rehearsal_main

    config = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "rehearsal.toml"
    doc = tomllib.loads(config.read_text())
    assert [(m["id"], m["arch"], m["model_kwargs"]) for m in doc["zoo"]["models"]] == \
        [(a.model_id, a.arch, json.loads(json.dumps(a.kwargs))) for a in ARCHS]
    assert doc["transfer"]["methods"] == list(method_names())
    monkeypatch.chdir(tmp_path)
    assert rehearsal_main(["make-tree", "rehearsal"]) == 0
    assert rehearsal_main(["zoo-study", "run", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "transfer" in out and not (tmp_path / "runs").exists()
