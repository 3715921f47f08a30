"""Study config: defaults, overrides, one-line errors naming key, value and what is valid."""

from __future__ import annotations

import pytest

from zoo_study.config import ConfigError, apply_overrides, load_config, validate_config


def test_demo_config_loads_and_round_trips_through_toml(tmp_path):
    cfg = load_config(None)
    assert cfg.study.name == "demo" and cfg.data.kind == "generated"
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg


def test_overrides_parse_literals_and_nested_keys():
    raw = apply_overrides({}, ["transfer.epochs=3", "transfer.methods=['kl', 'kl_dp']", "study.name=x y",
                               "transfer.hparams={kl_dp={lr=1e-3}}"])
    cfg = validate_config(raw)
    assert cfg.transfer.epochs == 3 and cfg.transfer.methods == ["kl", "kl_dp"]
    assert cfg.study.name == "x y" and cfg.transfer.hparams == {"kl_dp": {"lr": 1e-3}}


@pytest.mark.parametrize(
    "raw, needles",
    [
        ({"transfer": {"augment": "colour"}}, ["transfer.augment", "colour", "paper"]),
        ({"transfer": {"student_mode": "frozen"}}, ["transfer.student_mode", "frozen"]),
        ({"transfer": {"hparams": {"magic": {}}}}, ["magic", "valid"]),
        ({"score": {"pairs": "random"}}, ["score.k"]),
        ({"ray": {"max_retries": -1}}, ["ray.max_retries", "-1"]),
        ({"zoo": {"models": [{"id": "m", "source": "local"}]}}, ["checkpoint"]),
        ({"transfr": {}}, ["transfr", "valid keys", "transfer"]),
        ({"semantics": {"encoder": "glove"}}, ["glove", "lexical", "clip:"]),
        ({"ray": {"pack_students": 0}}, ["ray.pack_students", "0"]),
        ({"zoo": {"adapt": {"mode": "lora"}}}, ["zoo.adapt.mode", "lora", "linear_probe"]),
        ({"data": {"generated": {"domain": "watercolour"}}}, ["domain", "watercolour", "sketch"]),
    ],
)
def test_bad_values_name_key_value_and_valid_choices(raw, needles):
    with pytest.raises(ConfigError) as exc:
        validate_config(raw)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_bad_override_syntax_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["transfer.epochs"])


def test_transfer_config_validates_augment():
    from zoo_study.transfer import TransferConfig

    with pytest.raises(ValueError, match="augment"):
        TransferConfig(method="kl", augment="colour")
    assert TransferConfig(method="kl", augment="flip").augment == "flip"


def test_optional_mixup_recipes_are_named_beside_all_and_differ_only_in_mixup():
    from dataclasses import asdict

    from pipelines.study import study_models
    from zoo_study.zoo.recipes import EMBEDDED_RECIPES, OPTIONAL_RECIPES, recipe_by_id, select_recipes

    assert [r.model_id for r in select_recipes("all")] == [r.model_id for r in EMBEDDED_RECIPES]
    assert select_recipes("none") == []
    chosen = [r.model_id for r in select_recipes(["mixer_p8_mixup", "all", "mixer_p8_mixup"])]
    assert chosen[0] == "mixer_p8_mixup" and chosen[1:] == [r.model_id for r in EMBEDDED_RECIPES]
    for opt in OPTIONAL_RECIPES:  # a controlled pair: the base recipe with mixup, nothing else changed
        base = recipe_by_id(opt.model_id.removesuffix("_mixup"))
        diff = {k for k, v in asdict(opt).items() if asdict(base)[k] != v}
        assert diff == {"model_id", "mixup_alpha"} and opt.mixup_alpha > 0 == base.mixup_alpha
    cfg = load_config(None, ["zoo.embedded=['all', 'resnet10t_w24_ls_mixup']"])
    ids = [p.model_id for p in study_models(cfg)]
    assert "resnet10t_w24_ls_mixup" in ids and len([i for i in ids if not i.startswith("random__")]) == 13
    assert "resnet10t_w24_ls_mixup" not in [p.model_id for p in study_models(load_config(None))]
    with pytest.raises(ConfigError, match="resnet10t_mixup"):
        load_config(None, ["zoo.embedded=['resnet10t_mixup']"])
