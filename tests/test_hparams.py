"""Hyper-parameter grids and the best setting per method."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from zoo_study.methods import default_grid, methods
from zoo_study.methods.grids import check_grid_keys
from zoo_study.transfer import TransferConfig, best_per_method, grid_points


def test_grid_points_give_one_config_per_point():
    grid = {"lr": [1e-2, 1e-3], "temperature": [0.1, 1.0, 4.0], "lambda": [0.5, 0.7]}
    cfgs = [TransferConfig(method="xe_kl", epochs=3, batch_size=64, study_part="hparam", hparams=point)
            for point in grid_points(grid)]
    assert len(cfgs) == 2 * 3 * 2
    points = [(c.base_lr, c.temperature, c.hparams["lambda"]) for c in cfgs]
    assert points == [(a, b, c) for a in grid["lr"] for b in grid["temperature"] for c in grid["lambda"]]  # key order
    assert all(c.study_part == "hparam" and c.epochs == 3 and c.batch_size == 64 for c in cfgs)
    assert len({c.to_json() for c in cfgs}) == 12


def test_grid_points_and_method_name_base():
    points = grid_points({"lr": [1e-4, 1e-3], "temperature": [1.0]})
    assert points == [{"lr": 1e-4, "temperature": 1.0}, {"lr": 1e-3, "temperature": 1.0}]
    cfgs = [TransferConfig(method="kl_dp", hparams=p) for p in points]  # lr / T accepted with the params
    assert [(c.base_lr, c.temperature, c.hparams) for c in cfgs] == [(1e-4, 1.0, {"lambda": 1.0}),
                                                                      (1e-3, 1.0, {"lambda": 1.0})]
    with pytest.raises(ValueError, match="repeats values"):
        grid_points({"lr": [1, 1]})


def test_mcl_grid_tau_by_n():
    points = grid_points({"tau": [0.99, 0.999, 0.9999], "N": [2, 10]})
    cfgs = [TransferConfig(method="xe_kl_mcl", hparams=p) for p in points]
    assert [(c.resolved_hparams["tau"], c.resolved_hparams["N"]) for c in cfgs] == [
        (0.99, 2), (0.99, 10), (0.999, 2), (0.999, 10), (0.9999, 2), (0.9999, 10)]
    assert all(c.resolved_hparams["lambda"] == 0.7 and c.resolved_base_lr == 0.01 for c in cfgs)


@pytest.mark.parametrize(
    "grid, match",
    [
        ({"lr": []}, "non-empty list"),
        ({"lr": [0.1, 0.1]}, "repeats values"),
        ({"lr": [0.1], "base_lr": [0.2]}, "base_lr given twice"),
        ({"tau": [0.9]}, "grid key 'tau' is neither a config field .* nor one of its hyper-parameters \\(lambda\\)"),
        ({"method": ["kl"]}, "grid key 'method' is neither a config field"),
        ({"lambda": [0.5, 2.0]}, "lambda=2.0 is invalid"),
    ],
)
def test_grid_errors(grid, match):
    """The checks a grid meets on its way to jobs: its keys (the config's hparam_search check), its axes,
    then every point as a job's config (the planner's)."""
    with pytest.raises(ValueError, match=match):
        check_grid_keys("xe_kl", grid, TransferConfig(method="xe_kl").method_spec.params)
        for point in grid_points(grid):
            TransferConfig(method="xe_kl", hparams=point)


def test_default_grids_give_valid_configs_for_every_method():
    with_grid = [m.name for m in methods() if m.grid]
    assert {"kl", "xe_kl", "xe_kl_mcl", "kl_dp"} <= set(with_grid)
    for method in with_grid:
        grid = default_grid(method)
        cfgs = [TransferConfig(method=method, epochs=2, hparams=p) for p in grid_points(grid)]
        n = 1
        for values in grid.values():
            n *= len(values)
        assert len({c.to_json() for c in cfgs}) == n and all(c.epochs == 2 for c in cfgs), method


def _summary(rows):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return pa.table(cols)


def _row(method, hp, lr, student, teacher, delta, temperature=1.0, batch_size=256, epochs=20):
    return {"method": method, "hparams_json": json.dumps(hp, sort_keys=True, separators=(",", ":")), "lr": lr,
            "temperature": temperature, "batch_size": batch_size, "epochs": epochs, "student": student,
            "teacher": teacher, "delta_last": delta}


def test_best_per_method_by_mean_delta_over_pairs():
    rows = [
        # xe_kl, lambda 0.5: pair (s,a) three runs of 0.4, pair (s,b) -0.2 -> mean over pairs 0.1
        # (a mean over the 4 runs, 0.25, would wrongly make it the winner)
        _row("xe_kl", {"lambda": 0.5}, 1e-3, "s", "a", 0.4),
        _row("xe_kl", {"lambda": 0.5}, 1e-3, "s", "a", 0.4),
        _row("xe_kl", {"lambda": 0.5}, 1e-3, "s", "a", 0.4),
        _row("xe_kl", {"lambda": 0.5}, 1e-3, "s", "b", -0.2),
        # xe_kl, lambda 0.7: pairs 0.3 and 0.0 -> 0.15, the best
        _row("xe_kl", {"lambda": 0.7}, 1e-3, "s", "a", 0.3),
        _row("xe_kl", {"lambda": 0.7}, 1e-3, "s", "b", 0.0),
        # xe_kl, lambda 0.9: higher mean but only one pair (the other diverged) -> excluded
        _row("xe_kl", {"lambda": 0.9}, 1e-3, "s", "a", 0.9),
        # kl_dp: two lrs, the smaller wins
        _row("kl_dp", {}, 1e-4, "s", "a", 0.05),
        _row("kl_dp", {}, 1e-4, "s", "b", 0.03),
        _row("kl_dp", {}, 1e-2, "s", "a", -0.5),
        _row("kl_dp", {}, 1e-2, "s", "b", 0.2),
    ]
    best = best_per_method(_summary(rows))
    got = {r["method"]: r for r in best.to_pylist()}
    assert set(got) == {"xe_kl", "kl_dp"}
    assert got["xe_kl"]["hparams_json"] == '{"lambda":0.7}'
    assert got["xe_kl"]["mean_delta_last"] == pytest.approx(0.15)
    assert (got["xe_kl"]["n_pairs"], got["xe_kl"]["n_runs"], got["xe_kl"]["n_settings"]) == (2, 2, 2)
    assert got["kl_dp"]["lr"] == 1e-4 and got["kl_dp"]["mean_delta_last"] == pytest.approx(0.04)
    assert got["kl_dp"]["success_rate"] == 1.0
    loose = {r["method"]: r for r in best_per_method(_summary(rows), require_all_pairs=False).to_pylist()}
    assert loose["xe_kl"]["hparams_json"] == '{"lambda":0.9}'


def test_best_per_method_tie():
    rows = [
        _row("kl", {}, 2e-3, "s", "a", 0.1, batch_size=128, temperature=4.0),
        _row("kl", {}, 1e-3, "s", "a", 0.1, batch_size=128, temperature=1.0),
    ]
    best = best_per_method(_summary(rows)).to_pylist()[0]
    assert best["lr"] == 1e-3  # tie: the setting that sorts first
    assert best["base_lr"] == pytest.approx(2e-3)  # lr 1e-3 at batch 128 -> 2e-3 at 256
    with pytest.raises(ValueError, match="lack columns"):
        best_per_method(pa.table({"method": ["kl"]}))
