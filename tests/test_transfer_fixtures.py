"""The shared transfer fixtures (tests/helpers/transfer_fixtures.py) give models better than chance."""

from __future__ import annotations

from helpers.transfer_fixtures import NUM_CLASSES, tiny_source, trained
from zoo_study.data import ModelPreprocess


def test_fixture_models_are_better_than_chance():
    from zoo_study.transfer import Runtime, predict_split

    src = tiny_source()
    m, rec = trained(0)
    pred = predict_split(m, src.eval, ModelPreprocess.from_data_config(rec.data_config), batch_size=64,
                         rt=Runtime.create("cpu"))
    assert (pred == src.eval.labels).mean() > 1.5 / NUM_CLASSES
