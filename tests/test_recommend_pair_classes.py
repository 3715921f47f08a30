"""``score.pair_classes``: per-class flip counts kept for every scored pair (default), only the transfer
stage's pairs, or none; the pair table and the default score job id do not change."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.executors import score_job
from pipelines.jobs import job_id_for
from pipelines.plan_transfers import sample_pairs_by_delta, transfer_pairs
from pipelines.study import Study, plan_stage
from zoo_study.config import ConfigError, validate_config
from zoo_study.store import PREDICTION_SCHEMA, ResultsLayout, write_parquet_atomic

MODELS = ["a", "b", "c", "d"]


def _predictions() -> dict[str, pa.Table]:
    """4 models x 12 samples x 3 classes with different accuracies (so delta_acc spreads) and flips in
    several classes."""
    rng = np.random.default_rng(0)
    labels = np.arange(12, dtype=np.int32) % 3
    out = {}
    for i, m in enumerate(MODELS):
        right = rng.random(12) < 0.4 + 0.15 * i
        pred = np.where(right, labels, (labels + 1) % 3).astype(np.int32)
        out[m] = pa.Table.from_arrays(
            [pa.array([m] * 12), pa.array(np.arange(12, dtype=np.int64)), pa.array(labels), pa.array(pred),
             pa.array(np.full(12, 0.5, np.float32)), pa.array(np.full(12, 0.5, np.float32)),
             pa.nulls(12, pa.list_(pa.int32()))], schema=PREDICTION_SCHEMA)
    return out


def _inputs() -> dict[str, bytes]:
    layout = ResultsLayout("")
    out = {}
    for m, t in _predictions().items():
        buf = io.BytesIO()
        pq.write_table(t, buf)
        out[str(layout.predictions(m))] = buf.getvalue()
    return out


def _spec(keep: dict | None) -> dict:
    spec = {"models": MODELS, "random_teachers": [], "pairs": {"pairs": "all", "k": None, "seed": 0, "explicit": []}}
    if keep is not None:
        spec["pair_classes"] = keep
    return spec


def _pairs_of(table: pa.Table) -> set[tuple[str, str]]:
    return set(zip(table.column("teacher").to_pylist(), table.column("student").to_pylist()))


def _only(table: pa.Table, pairs: list[tuple[str, str]]) -> pa.Table:
    keys = pc.binary_join_element_wise(table.column("teacher"), table.column("student"), "|")
    return table.filter(pc.is_in(keys, value_set=pa.array([f"{t}|{s}" for t, s in pairs])))


def test_transfer_pairs_keep_exactly_their_own_per_class_rows() -> None:
    full = score_job(_spec(None), _inputs(), None)
    assert _pairs_of(full["pair_classes"]) == {(t, s) for t in MODELS for s in MODELS if t != s}
    chosen = [("a", "d"), ("c", "b")]
    kept = score_job(_spec({"keep": "transfer_pairs", "explicit": [list(p) for p in chosen]}), _inputs(), None)
    assert kept["pairs"].equals(full["pairs"])  # every pair still scored
    assert kept["pair_classes"].num_rows > 0 and _pairs_of(kept["pair_classes"]) == set(chosen)
    assert kept["pair_classes"].equals(_only(full["pair_classes"], chosen))  # the same counts as before


def test_none_keeps_the_pair_table_and_no_per_class_rows() -> None:
    full = score_job(_spec(None), _inputs(), None)
    none = score_job(_spec({"keep": "none"}), _inputs(), None)
    assert none["pairs"].equals(full["pairs"]) and none["pair_classes"].num_rows == 0


def test_sampled_transfer_pairs_are_the_ones_the_transfer_planner_draws(tmp_path: Path) -> None:
    cfg = validate_config({"study": {"results_root": str(tmp_path), "seed": 3},
                           "zoo": {"embedded": "none", "models": [{"id": m, "arch": "resnet18"} for m in MODELS]},
                           "score": {"pair_classes": "transfer_pairs"},
                           "transfer": {"pairs": "sample", "n_pairs": 3}})
    layout = ResultsLayout(tmp_path)
    (job,) = plan_stage(cfg, "score")
    assert job.spec["pair_classes"] == {"keep": "transfer_pairs", "sample": {"n": 3, "seed": 3}}
    out = score_job(_spec(job.spec["pair_classes"]), _inputs(), None)
    write_parquet_atomic(out["pairs"], layout.pairs)
    planned = transfer_pairs(Study.from_config(cfg))  # what the transfer stage will run, drawn from the written scores
    assert len(planned) == 3 and _pairs_of(out["pair_classes"]) == set(planned)
    assert planned == sample_pairs_by_delta(out["pairs"], 3, 3)


def _cfg(tmp_path: Path, **score) -> object:
    return validate_config({"study": {"results_root": str(tmp_path)},
                            "zoo": {"embedded": "none", "models": [{"id": m, "arch": "resnet18"} for m in MODELS]},
                            "score": score, "transfer": {"pairs": "explicit", "explicit": [["a", "b"], ["d", "c"]]}})


def test_the_default_keeps_the_score_job_spec_and_id(tmp_path: Path) -> None:
    (job,) = plan_stage(_cfg(tmp_path), "score")
    # the spec as it was before score.pair_classes existed, written out by hand
    old = {"models": MODELS, "random_teachers": [], "pairs": {"pairs": "all", "k": None, "seed": 0, "explicit": []}}
    assert job.spec == old and job_id_for("score", job.spec) == job_id_for("score", old)
    (kept,) = plan_stage(_cfg(tmp_path, pair_classes="transfer_pairs"), "score")
    assert kept.spec["pair_classes"] == {"keep": "transfer_pairs", "explicit": [["a", "b"], ["d", "c"]]}
    assert job_id_for("score", kept.spec) != job_id_for("score", old)


def test_a_bad_value_names_the_key_and_the_valid_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"score.pair_classes.*'all', 'transfer_pairs' or 'none'"):
        _cfg(tmp_path, pair_classes="some")


def _bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_semantics_reads_only_the_pairs_that_kept_per_class_counts() -> None:
    from pipelines.executors import semantics_job

    chosen = [("a", "d"), ("c", "b")]
    scores = score_job(_spec({"keep": "transfer_pairs", "explicit": [list(p) for p in chosen]}), _inputs(), None)
    layout = ResultsLayout("")
    inputs = {str(layout.pairs): _bytes(scores["pairs"]), str(layout.pair_classes): _bytes(scores["pair_classes"])}
    spec = {"data": {"kind": "generated", "generated": {"num_superclasses": 1, "classes_per_superclass": 3}},
            "settings": {"encoder": "lexical", "random_sets": 5, "seed": 0}}
    everything = semantics_job(spec, inputs, None)["pair_semantics"]
    assert _pairs_of(everything) == _pairs_of(scores["pairs"])  # as before: pairs without counts read as zero
    kept = semantics_job({**spec, "pair_classes": "transfer_pairs"}, inputs, None)["pair_semantics"]
    assert _pairs_of(kept) == set(chosen)
    assert kept.equals(_only(everything, chosen))
