"""The budget selection's criterion on hand-made counts, and its misuse errors (one line, exit 2)."""

from __future__ import annotations

import pytest

from pipelines.select_budget import main_cli, verdict


def _row(g: int, l: int, n: int = 1000) -> dict:
    from zoo_study.stats import mcnemar_exact_p

    return {"n_gain": g, "n_loss": l, "n_eval": n, "p_mcnemar": mcnemar_exact_p(g, l)}


def test_adequate_needs_a_significant_pooled_loss_and_most_pairs_forgetting():
    # pooled 60 vs 140 (p << 0.05), 3 of 4 pairs significantly losing -> adequate
    assert verdict([_row(10, 40), _row(10, 40), _row(10, 40), _row(30, 20)])["adequate"]
    # pooled loss significant but only 2 of 4 pairs on their own -> not adequate
    v = verdict([_row(10, 60), _row(10, 60), _row(30, 28), _row(30, 28)])
    assert v["gain"] == 80 and v["loss"] == 176 and v["forgets"] == 2 and not v["adequate"]
    # more gain than loss is never adequate
    assert not verdict([_row(40, 10)] * 4)["adequate"]


def test_misuse_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main_cli([str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "missing.toml" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[study]\nresults_root = "{tmp_path / "root"}"\n')
    with pytest.raises(SystemExit) as info:
        main_cli([str(cfg)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "scores/pairs.parquet is missing" in err and len(err.splitlines()) == 1


def test_candidates_try_every_step_count_at_the_papers_lr_before_any_lr_scaling():
    from pipelines.select_budget import CANDIDATES

    scales = [b.lr_scale for b in CANDIDATES]
    first_scaled = next(i for i, s in enumerate(scales) if s != 1.0)
    assert all(s == 1.0 for s in scales[:first_scaled]) and all(s != 1.0 for s in scales[first_scaled:])
    # the paper's 20 epochs over the transfer set are among the 1x candidates
    assert any(b.epochs == 20 and b.lr_scale == 1.0 for b in CANDIDATES)
    assert all("transfer.protocol=paper_ratios" in b.overrides() for b in CANDIDATES)


def test_weak_teacher_pairs_are_disjoint_from_the_studys_pairs(tmp_path):
    from helpers.analysis_fixtures import RootBuilder
    from pipelines.select_budget import weak_teacher_pairs

    b = RootBuilder(tmp_path)
    for i in range(6):
        b.pair_row(f"T{i}", "S", acc_t=0.4 - 0.02 * i, acc_s=0.7, rho_pos=0.05)  # all >= 10 points weaker
    b.write_scores()
    study = {("T0", "S"), ("T1", "S"), ("T2", "S")}
    picks = weak_teacher_pairs(tmp_path, 3, exclude=study)
    assert len(picks) == 3 and not ({(t, s) for t, s, _ in picks} & study)
    with pytest.raises(SystemExit) as info:
        weak_teacher_pairs(tmp_path, 3, exclude={(f"T{i}", "S") for i in range(6)})
    assert info.value.code == 2


@pytest.mark.parametrize("config", ["claims.toml", "demo.toml"])
def test_every_candidates_overrides_load_with_the_shipped_config(tmp_path, config):
    """The claims config runs some methods on a share of the pairs (transfer.method_pairs); a candidate
    runs KL-Dist alone, so its overrides must clear what would name the other methods."""
    from pipelines.select_budget import CANDIDATES, candidate_overrides
    from zoo_study.config import load_config

    pairs = [("mixer_p8", "vit_p8_d96", -0.2), ("pit_p8", "vit_p8_d96", -0.15)]
    for budget in CANDIDATES:
        argv = candidate_overrides(tmp_path / "b", budget, pairs)
        cfg = load_config(f"pipelines/configs/{config}", argv[1::2])
        assert cfg.transfer.methods == ["kl"] and cfg.transfer.method_pairs == {}
        assert cfg.transfer.epochs == budget.epochs and cfg.transfer.explicit == [tuple(p[:2]) for p in pairs]
