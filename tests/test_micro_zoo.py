"""End-to-end test of the zoo layer on a micro zoo: train -> save -> load -> predict -> Parquet -> accuracy.

Why: this is the path every default study takes (train the embedded zoo, cache each model's
predictions, score pairs from the Parquet files). Three tiny recipes, one per family, each with a
different preprocessing (crop, mean/std) and training option (label smoothing, mixup, half data), are
trained for a few steps on a tiny generated dataset; the accuracy read back from Parquet must equal a
plain per-sample loop with the loaded model. A few seconds on one CPU thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

import zoo_study  # noqa: F401  (torchvision compat before timm)
from zoo_study.data import GeneratedSpec, ModelPreprocess, make_generated
from zoo_study.predict import accuracy, predict
from zoo_study.store import MODEL_SCHEMA, PREDICTION_SCHEMA, ResultsLayout, read_parquet_checked, write_bytes_atomic
from zoo_study.store import write_parquet_atomic
from zoo_study.zoo.loading import ModelRef, load_model, read_checkpoint_metadata
from zoo_study.zoo.recipes import HALF, Recipe
from zoo_study.zoo.train import train_recipe

torch.set_num_threads(1)

SPEC = GeneratedSpec(seed=2, num_superclasses=2, classes_per_superclass=3, image_size=16, n_train=384, n_eval=60)
RECIPES = (
    # CNN: 14px input cut from a 16px resize (crop_pct .875), flip + padded crop
    Recipe("micro_cnn", "resnet10t", {"channels": (8, 16, 16, 16)}, input_size=14, crop_pct=0.875, epochs=6,
           batch_size=32, lr=3e-3, seed=0),
    # Transformer: half mean/std, label smoothing
    Recipe("micro_vit", "vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1,
           "num_heads": 2}, input_size=16, mean=HALF, std=HALF, epochs=2, batch_size=32, label_smoothing=0.1, seed=1),
    # MLP: mixup, flips only, half of the training split
    Recipe("micro_mlp", "zoo_mixer_p4", {"img_size": 16, "num_blocks": 1, "embed_dim": 32}, input_size=16, epochs=2,
           batch_size=32, mixup_alpha=0.4, augment="flip", train_fraction=0.5, seed=2),
)
FAMILIES = {"micro_cnn": "cnn", "micro_vit": "transformer", "micro_mlp": "mlp"}


@pytest.fixture(scope="module")
def source():
    return make_generated(SPEC)


@pytest.fixture(scope="module")
def zoo(source, tmp_path_factory):
    """Train the three recipes once; weights written under a results root as the pipeline does."""
    layout = ResultsLayout(tmp_path_factory.mktemp("run"))
    trained = {}
    for recipe in RECIPES:
        data, info = train_recipe(recipe, source)
        path = write_bytes_atomic(data, layout.weights(recipe.model_id))
        trained[recipe.model_id] = (recipe, data, info, path)
    return layout, trained


def per_sample_accuracy(model, split, pre: ModelPreprocess) -> tuple[float, dict[int, int]]:
    """Independent recomputation: one image at a time, no loader, no batching."""
    preds = {}
    with torch.no_grad():
        for i in range(len(split)):
            img, label, sid = split[i]
            preds[sid] = int(model(pre(img.unsqueeze(0))).argmax(dim=1))
    correct = sum(preds[int(s)] == int(y) for s, y in zip(split.sample_ids, split.labels))
    return correct / len(split), preds


def test_training_reports_and_metadata(zoo, source):
    _, trained = zoo
    for model_id, (recipe, data, info, path) in trained.items():
        assert info["steps"] >= 1 and np.isfinite(info["final_loss"]) and info["train_seconds"] > 0
        meta = read_checkpoint_metadata(path)
        assert meta["arch"] == recipe.arch and meta["num_classes"] == source.num_classes == 6
        assert meta["data_config"] == recipe.data_config and meta["recipe"]["model_id"] == model_id
        assert path.read_bytes() == data


def test_each_model_loads_its_saved_weights(zoo, source):
    _, trained = zoo
    for model_id, (recipe, data, info, path) in trained.items():
        model, record = load_model(ModelRef(model_id, source="embedded", checkpoint=str(path),
                                            num_classes=source.num_classes))
        saved = st_load(data)
        state = model.state_dict()
        assert saved.keys() == state.keys()
        assert all(torch.equal(saved[k], state[k]) for k in saved), model_id
        assert record.family == FAMILIES[model_id] and record.arch == recipe.arch
        assert record.input_size == [3, recipe.input_size, recipe.input_size] and record.crop_pct == recipe.crop_pct
        assert record.mean == list(recipe.mean) and record.train_seconds == pytest.approx(info["train_seconds"])
        assert json.loads(record.recipe_json)["recipe"] == json.loads(recipe.to_json())


def test_predictions_parquet_accuracy_matches_independent_loop(zoo, source):
    layout, trained = zoo
    accuracies = {}
    for model_id, (_, _, _, path) in trained.items():
        model, record = load_model(ModelRef(model_id, source="embedded", checkpoint=str(path),
                                            num_classes=source.num_classes))
        pre = ModelPreprocess.from_data_config(record.data_config)
        write_parquet_atomic(record.to_table(), layout.model_row(model_id), schema=MODEL_SCHEMA)
        table = predict(model, source.eval, pre, model_id=model_id, batch_size=16, topk=3)
        write_parquet_atomic(table, layout.predictions(model_id), schema=PREDICTION_SCHEMA)

        back = read_parquet_checked(layout.predictions(model_id), PREDICTION_SCHEMA)
        assert back is not None and back.num_rows == len(source.eval)
        acc_loop, loop_preds = per_sample_accuracy(model, source.eval, pre)
        assert accuracy(back) == pytest.approx(acc_loop, abs=1e-12)
        accuracies[model_id] = acc_loop

        rows = back.to_pydict()
        assert set(rows["model_id"]) == {model_id}
        assert rows["sample_id"] == source.eval.sample_ids.tolist()
        assert rows["label"] == source.eval.labels.tolist()
        assert rows["pred"] == [loop_preds[s] for s in rows["sample_id"]]
        for pred, topk, p_max, p_label in zip(rows["pred"], rows["topk"], rows["p_max"], rows["p_label"]):
            assert len(topk) == 3 and topk[0] == pred and 0 < p_label <= p_max <= 1

        catalog = read_parquet_checked(layout.model_row(model_id), MODEL_SCHEMA)
        assert catalog.column("family").to_pylist() == [FAMILIES[model_id]]
    assert len(accuracies) == 3 and all(0 <= a <= 1 for a in accuracies.values())
    # the CNN trains long enough to learn: far above chance (1/6) proves labels, preprocessing and
    # weights line up end to end (it reaches about 0.6-0.7 across seeds)
    assert accuracies["micro_cnn"] > 0.4


def test_training_is_deterministic(zoo, source):
    _, trained = zoo
    recipe, data, _, _ = trained["micro_mlp"]  # mixup + random subset + flips: every random draw
    again, _ = train_recipe(recipe, source)
    a, b = st_load(data), st_load(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_split_smaller_than_one_batch_still_trains(source):
    """A batch larger than the split used to yield no batch at all (drop_last) and loop forever."""
    tiny = source.train.subset(np.arange(12))
    tiny_source = type(source)(name="tiny", train=tiny, eval=source.eval, class_names=source.class_names)
    recipe = Recipe("tiny", "resnet10t", {"channels": (4, 8, 8, 8)}, input_size=16, epochs=1, batch_size=64)
    _, info = train_recipe(recipe, tiny_source)
    assert info["steps"] == 1


def test_prediction_table_by_hand():
    from zoo_study.predict import prediction_table

    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], dtype=np.float32)
    t = prediction_table("m", np.array([10, 11, 12]), np.array([1, 2, 0]), probs, topk=2)
    assert t.schema.equals(PREDICTION_SCHEMA)
    rows = t.to_pydict()
    assert rows["pred"] == [1, 0, 2] and rows["sample_id"] == [10, 11, 12]
    assert rows["p_label"] == pytest.approx([0.7, 0.25, 0.2]) and rows["p_max"] == pytest.approx([0.7, 0.5, 0.6])
    assert rows["topk"] == [[1, 2], [0, 1], [2, 0]]  # ties keep the lower class first
    assert accuracy(t) == pytest.approx(1 / 3)
    assert prediction_table("m", np.array([1]), np.array([0]), probs[:1], topk=0).column("topk").null_count == 1
    with pytest.raises(ValueError, match="a label is 3"):
        prediction_table("m", np.array([1]), np.array([3]), probs[:1])
    with pytest.raises(ValueError, match="a label is -1"):
        prediction_table("m", np.array([1]), np.array([-1]), probs[:1])
    with pytest.raises(ValueError, match="same number of rows"):
        prediction_table("m", np.array([1, 2]), np.array([0]), probs[:1])
    with pytest.raises(ValueError, match="empty"):
        accuracy(t.slice(0, 0))
