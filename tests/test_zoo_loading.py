"""Tests of model loading (zoo_study.zoo.loading) and catalog records (zoo_study.zoo.catalog).

Why: every study starts by loading a zoo; a model that silently loads other weights, the wrong head
or no weights at all would poison every number downstream. Weights are checked by comparing outputs
with the model that was saved, all files are written here (tiny widths), and the network is blocked
at the socket level so the offline behaviour is proven, not assumed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
from safetensors.torch import save_file

from zoo_study.store import MODEL_SCHEMA
from zoo_study.zoo import loading
from zoo_study.zoo.catalog import CatalogRecord, family_of
from zoo_study.zoo.loading import RECIPE_METADATA_KEY, ModelLoadError, ModelRef, file_digest, load_model

torch.set_num_threads(1)

TINY_RESNET = {"channels": (8, 16, 16, 16)}  # resnet18 layout with tiny widths (~60k parameters)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_resnet18(num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes, **TINY_RESNET).eval()


def save_safetensors(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(X), b.eval()(X))


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any connection or DNS lookup; records attempts."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# ------------------------------------------------------------------------------------- local weights
def test_safetensors_through_the_pretrained_name_path(tmp_path, no_network):
    saved = tiny_resnet18()
    path = save_safetensors(saved, tmp_path / "r18.safetensors")
    ref = ModelRef("r18", source="timm", arch="resnet18.a1_in1k", checkpoint=str(path), model_kwargs=TINY_RESNET)
    model, record = load_model(ref)
    assert not model.training
    assert_same_weights(saved, model)
    # the catalog record: family, size, the pretrained tag's data config, the file's content hash
    n_params = sum(p.numel() for p in saved.parameters())
    assert record.family == "cnn" and record.params_m == round(n_params / 1e6, 4)
    assert record.arch == "resnet18.a1_in1k" and record.source == "timm" and record.num_classes == 10
    assert record.checkpoint == str(path) and record.weights_id == file_digest(path)
    a1 = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    assert record.input_size == list(a1.input_size) and record.crop_pct == a1.crop_pct
    assert record.interpolation == a1.interpolation and record.mean == list(a1.mean)
    assert no_network == []


def test_embedded_checkpoint_with_metadata_needs_no_arch(tmp_path):
    torch.manual_seed(1)
    kwargs = {"num_blocks": 1, "embed_dim": 16, "num_classes": 4}
    saved = timm.create_model("zoo_mixer_p4", pretrained=False, **kwargs).eval()
    data_config = {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3,
                   "std": [0.25] * 3}
    meta = {"arch": "zoo_mixer_p4", "model_kwargs": kwargs, "data_config": data_config, "num_classes": 4,
            "recipe": {"model_id": "mix"}, "train_seconds": 1.5}
    path = save_safetensors(saved, tmp_path / "mix.safetensors", {RECIPE_METADATA_KEY: json.dumps(meta)})
    assert loading.read_checkpoint_metadata(path) == meta

    model, record = load_model(ModelRef("mix", source="embedded", checkpoint=str(path), num_classes=4))
    assert_same_weights(saved, model)
    assert record.arch == "zoo_mixer_p4" and record.family == "mlp" and record.num_classes == 4
    assert record.params_m == round(sum(p.numel() for p in saved.parameters()) / 1e6, 4)
    assert record.data_config == data_config  # from the metadata, not timm's defaults
    assert json.loads(record.recipe_json) == meta and record.train_seconds == 1.5
    # the record is one MODEL_SCHEMA row and round-trips through it
    table = record.to_table()
    assert table.schema.equals(MODEL_SCHEMA) and table.num_rows == 1
    assert CatalogRecord.from_row(table.to_pylist()[0]) == record


def test_data_config_override_wins_over_metadata(tmp_path):
    saved = tiny_resnet18(num_classes=3)
    meta = {"arch": "resnet18", "model_kwargs": TINY_RESNET, "data_config": {"input_size": [3, 32, 32], "crop_pct": 1.0}}
    path = save_safetensors(saved, tmp_path / "m.safetensors", {RECIPE_METADATA_KEY: json.dumps(meta)})
    _, record = load_model(ModelRef("m", source="local", checkpoint=str(path), data_config={"crop_pct": 0.875}))
    assert record.crop_pct == 0.875 and record.input_size == [3, 32, 32]


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_pth_checkpoints_load_with_weights_only(tmp_path, monkeypatch, wrap):
    saved = tiny_resnet18(num_classes=5)
    path = tmp_path / "m.pth"
    torch.save(saved.state_dict() if wrap is None else {wrap: saved.state_dict(), "epoch": 3}, path)
    seen: list = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model, record = load_model(ModelRef("p", source="local", arch="resnet18", checkpoint=str(path),
                                        model_kwargs=TINY_RESNET, num_classes=5))
    assert_same_weights(saved, model)
    assert seen and all(flag is True for flag in seen)  # every torch.load call was weights-only
    assert record.num_classes == 5 and record.source == "local"


def test_pickled_code_in_a_pth_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_resnet18().state_dict(), "extra": Payload()}, path)
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelRef("evil", source="local", arch="resnet18", checkpoint=str(path), model_kwargs=TINY_RESNET))
    msg = str(err.value)
    assert "weights_only=True" in msg and "'evil'" in msg and "\n" not in msg
    assert not marker.exists()


def test_random_source_is_seeded():
    ref = ModelRef("noise", source="random", arch="resnet18", model_kwargs=TINY_RESNET, num_classes=3, seed=4)
    a, rec = load_model(ref)
    b, _ = load_model(ref)
    assert_same_weights(a, b)
    c, _ = load_model(ModelRef("noise", source="random", arch="resnet18", model_kwargs=TINY_RESNET, num_classes=3,
                               seed=5))
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert rec.weights_id == "random-seed4" and rec.checkpoint is None and rec.num_classes == 3


# ---------------------------------------------------------------------------------------------- errors
def load_error(ref: ModelRef) -> str:
    with pytest.raises(ModelLoadError) as err:
        load_model(ref)
    msg = str(err.value)
    assert "\n" not in msg, msg  # every load error is one line
    return msg


def test_unknown_model_name_suggests_close_names():
    msg = load_error(ModelRef("x", source="timm", arch="resnet1B.a1_in1k"))
    assert "unknown timm model 'resnet1B.a1_in1k'" in msg and "did you mean" in msg and "resnet18" in msg


def test_unknown_pretrained_tag_lists_known_tags():
    msg = load_error(ModelRef("x", source="timm", arch="resnet18.nope_in1k"))
    assert "'resnet18.nope_in1k'" in msg and "resnet18.a1_in1k" in msg


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "gone.safetensors"
    msg = load_error(ModelRef("m", source="local", arch="resnet18", checkpoint=str(missing)))
    assert str(missing) in msg and "does not exist" in msg


def test_checkpoint_with_wrong_class_count(tmp_path):
    path = save_safetensors(tiny_resnet18(num_classes=10), tmp_path / "m.safetensors")
    msg = load_error(ModelRef("m", source="timm", arch="resnet18.a1_in1k", checkpoint=str(path),
                              model_kwargs=TINY_RESNET, num_classes=7))
    assert "10 classes" in msg and "7" in msg and str(path) in msg


def test_wrong_class_count_is_caught_through_a_ddp_prefix(tmp_path):
    """``module.``-prefixed keys (saved from DistributedDataParallel) load fine through timm, so the
    class check must see through the prefix; it used to miss it and timm then silently dropped the
    10-class head and left a random 7-class one."""
    saved = tiny_resnet18(num_classes=10)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}}, path)
    msg = load_error(ModelRef("m", source="local", arch="resnet18", checkpoint=str(path), model_kwargs=TINY_RESNET,
                              num_classes=7))
    assert "10 classes" in msg
    model, record = load_model(ModelRef("m", source="local", arch="resnet18", checkpoint=str(path),
                                        model_kwargs=TINY_RESNET, num_classes=10))
    assert_same_weights(saved, model)


def test_head_under_another_name_is_an_error_not_a_random_head(tmp_path):
    saved = tiny_resnet18(num_classes=10)
    state = {k.replace("fc.", "classifier."): v for k, v in saved.state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    msg = load_error(ModelRef("m", source="local", arch="resnet18", checkpoint=str(path), model_kwargs=TINY_RESNET,
                              num_classes=7))
    assert "does not fit architecture 'resnet18'" in msg and "fc.weight" in msg


def test_checkpoint_of_another_architecture(tmp_path):
    path = save_safetensors(tiny_resnet18(), tmp_path / "m.safetensors")
    msg = load_error(ModelRef("m", source="local", arch="resnet34", checkpoint=str(path), model_kwargs=TINY_RESNET))
    assert "does not fit architecture 'resnet34'" in msg and "Missing key" in msg


def test_checkpoint_without_metadata_needs_an_arch(tmp_path):
    path = save_safetensors(tiny_resnet18(), tmp_path / "m.safetensors")
    msg = load_error(ModelRef("m", source="embedded", checkpoint=str(path)))
    assert "no zoo-study metadata" in msg and "arch=" in msg


def test_corrupt_safetensors_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 64)
    msg = load_error(ModelRef("bad", source="local", arch="resnet18", checkpoint=str(path)))
    assert "'bad'" in msg and "not a readable safetensors file" in msg


@pytest.fixture
def online_looking_env(monkeypatch, tmp_path):
    """Undo the suite's HF_HUB_OFFLINE=1 and use empty caches, so load_model itself must keep offline."""
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    torch_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    yield hc
    torch.hub.set_dir(torch_hub)


@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "legacy_seresnet18.in1k"])  # HF hub / plain-URL weights
def test_pretrained_weights_not_cached_fail_offline_without_network(name, no_network, online_looking_env):
    msg = load_error(ModelRef("pre", source="timm", arch=name))
    assert f"'{name}'" in msg and f"zoo-study prefetch {name}" in msg and "offline" in msg
    assert no_network == []  # not one connection or DNS lookup
    # the switch is restored afterwards
    assert "HF_HUB_OFFLINE" not in os.environ and online_looking_env.HF_HUB_OFFLINE is False


def test_model_ref_validation():
    with pytest.raises(ValueError, match=r"source\n.*'timm', 'local', 'embedded' or 'random'.*input_value='hub'"):
        ModelRef("m", source="hub", arch="resnet18")
    with pytest.raises(ValueError, match="needs checkpoint"):
        ModelRef("m", source="local")
    with pytest.raises(ValueError, match="needs arch"):
        ModelRef("m", source="timm")


def test_family_of():
    assert family_of("resnet50.a1_in1k") == "cnn"
    assert family_of("vit_tiny_patch16_224") == "transformer"
    assert family_of("zoo_gmlp_p4") == "mlp"
    with pytest.raises(ValueError, match="'qwerty_net'"):
        family_of("qwerty_net")


# ------------------------------------------------------------- model_kwargs of a local checkpoint (issue 21)
def test_a_scratch_student_of_a_pth_checkpoint_keeps_its_model_kwargs(tmp_path):
    """A .pth state_dict of a narrowed resnet18 (no zoo-study metadata): the scratch rebuild uses the
    ModelRef's model_kwargs, not the full-width arch."""
    path = tmp_path / "narrow.pth"
    torch.save({"state_dict": tiny_resnet18(num_classes=7).state_dict()}, path)
    model, rec = load_model(ModelRef("narrow", source="local", arch="resnet18", checkpoint=str(path),
                                     model_kwargs=TINY_RESNET))
    fresh = loading.scratch_like(model, rec, seed=3)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert not torch.equal(fresh.fc.weight, model.fc.weight)


@pytest.mark.parametrize("kwargs,needle", [
    ({"pretrained_cfg_overlay": {"file": "x"}}, "model_kwargs may not set ['pretrained_cfg_overlay']"),
    ({"act_layer": object()}, "model_kwargs must be JSON values"),
])
def test_bad_model_kwargs_are_refused_with_one_line(kwargs, needle):
    with pytest.raises(ValueError) as exc:
        ModelRef("m", source="local", arch="resnet18", checkpoint="m.pth", model_kwargs=kwargs)
    assert needle in str(exc.value)


def test_model_kwargs_are_part_of_a_refs_identity():
    a = ModelRef("m", source="local", arch="resnet18", checkpoint="m.pth", model_kwargs={"channels": [8, 16, 16, 16]})
    b = ModelRef("m", source="local", arch="resnet18", checkpoint="m.pth", model_kwargs={"channels": [8, 8, 8, 8]})
    assert a != b and hash(a) != hash(b) and len({a, b}) == 2
