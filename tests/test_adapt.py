"""Adapting a trained model to other data (Figs 9 and 10): the head swap keeps the backbone, a linear probe
trains only the head, fine-tuning trains everything, and the checkpoint loads back with its new classes."""

from __future__ import annotations

import json

import pytest
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm

from zoo_study.data import GeneratedSpec, make_generated
from zoo_study.zoo.adapt import adapt_model, replace_head

torch.set_num_threads(1)


def _cnn():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64))


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2,
                             num_classes=6)


@pytest.mark.parametrize("make,head", [(_cnn, "fc"), (_vit, "head")])
def test_head_swap_keeps_the_backbone_and_changes_only_the_classifier(make, head):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replace_head(model, 4, seed=1)
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in after.items():
        if k.startswith(f"{head}."):
            assert v.shape[0] == 4 and v.shape != before[k].shape  # a new classifier for 4 classes
        else:
            assert torch.equal(v, before[k]), k  # the backbone as it was
    again = replace_head(make(), 4, seed=1).state_dict()
    assert all(torch.equal(again[k], after[k]) for k in after)  # the fresh head is seeded


def _data(class_set="b"):
    return make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=2, n_train=64, n_eval=16,
                                        image_size=16, class_set=class_set))


SETTINGS = {"epochs": 1.0, "lr": 1e-2, "batch_size": 32, "seed": 0}
META = {"arch": "resnet10t", "model_kwargs": {"channels": [8, 16, 32, 64]},
        "data_config": {"input_size": [3, 16, 16], "crop_pct": 1.0, "interpolation": "bilinear",
                        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "num_classes": 6}


@pytest.mark.parametrize("mode", ["linear_probe", "finetune"])
def test_probe_trains_the_head_only_and_finetune_everything(mode, tmp_path):
    from zoo_study.zoo.loading import load_model, read_checkpoint_metadata
    from zoo_study.zoo.ref import ModelRef

    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blob, info = adapt_model(model, META["data_config"], _data(), {**SETTINGS, "mode": mode}, meta=META,
                             new_head=True)
    sd = model.state_dict()
    backbone = [k for k in sd if not k.startswith("fc.")]
    changed = [k for k in backbone if not torch.equal(sd[k], before[k])]
    if mode == "linear_probe":
        assert changed == []  # weights and BatchNorm statistics as trained
    else:
        assert len(changed) > len(backbone) // 2
    assert sd["fc.weight"].shape == (4, 64) and info["steps"] == 2
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    meta = read_checkpoint_metadata(path)
    assert meta["num_classes"] == 4 and meta["adapted"]["settings"]["mode"] == mode
    loaded, rec = load_model(ModelRef("m", source="embedded", checkpoint=str(path), num_classes=4))
    assert rec.num_classes == 4 and json.loads(rec.recipe_json)["adapted"]["new_head"] is True
    assert all(torch.equal(loaded.state_dict()[k], sd[k]) for k in sd)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="valid: finetune, linear_probe"):
        adapt_model(_cnn(), META["data_config"], _data(), {**SETTINGS, "mode": "lora"}, meta=META, new_head=True)
