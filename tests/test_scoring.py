"""Tests of complementary-knowledge scoring (zoo_study.scoring, METHOD.md section 1).

Fast and pure numpy/pyarrow: a hand-computed 3-model example, a slow per-pair reference on random
predictions, edge cases of entropy and top-X% counting, pair selection and input validation.
"""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pyarrow as pa
import pytest

from helpers.analysis_fixtures import grassberger_entropy
from zoo_study.scoring import counts as sc_counts
from zoo_study.scoring import scoring as sc_scoring
from zoo_study.scoring import (
    PairSelection,
    align_predictions,
    entropy_from_counts,
    iter_pair_scores,
    random_pairs,
    score_pairs,
    select_pairs,
    top_x_counts,
)
from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA, TOP_X_PERCENTS


def _table(sample_ids, labels, preds, model_id: str = "m") -> pa.Table:
    """A prediction table with the columns scoring reads (plus model_id, as a stage writes it)."""
    n = len(sample_ids)
    return pa.table(
        {
            "model_id": pa.array([model_id] * n, pa.string()),
            "sample_id": pa.array(np.asarray(sample_ids), pa.int64()),
            "label": pa.array(np.asarray(labels), pa.int32()),
            "pred": pa.array(np.asarray(preds), pa.int32()),
        }
    )


# ----------------------------------------------------------------------------------- hand-made example
# 10 samples, ids 100, 110, ..., 190; labels: class 0 = samples 0-3, class 1 = 4-6, class 2 = 7-9.
HAND_LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
HAND_RIGHT = {
    "A": {0, 1, 2, 3, 4, 5, 7},  # acc 0.7
    "B": {0, 4, 5, 8},  # acc 0.4
    "C": {1, 6, 9},  # acc 0.3
}


def _hand_predictions(shuffle_b: bool = True) -> dict[str, pa.Table]:
    sids = [100 + 10 * i for i in range(10)]
    out = {}
    for m, right in HAND_RIGHT.items():
        # a wrong prediction is the next class
        preds = [y if i in right else (y + 1) % 3 for i, y in enumerate(HAND_LABELS)]
        rows = list(range(10))
        if m == "B" and shuffle_b:  # alignment must not depend on row order
            rows = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]
        out[m] = _table([sids[i] for i in rows], [HAND_LABELS[i] for i in rows], [preds[i] for i in rows], m)
    return out


# Worked out by hand. pos = teacher right & student wrong, neg = teacher wrong & student right.
#  (A,B): pos {1,2,3,7} -> per class (3,0,1); neg {8} -> (0,0,1). class 1 has no flip -> no row.
#         H = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - (3/4) ln 3 = 0.5623351446
#         top-X: sorted (3,1,0), total 4: the first class holds 75% >= 2,5,20,50%; 100% needs 2.
#  (B,A): pos {8} -> (0,0,1): one class holds every flip, H = 0, every top-X = 1. neg (3,0,1).
#  (A,C): pos {0,2,3,4,5,7} -> (3,2,1); neg {6,9} -> (0,1,1).
#         H = ln 6 - (3 ln 3 + 2 ln 2)/6 = 1.0114042647
#         top-X: sorted (3,2,1), total 6: 3/6 = 50% exactly at the 50% threshold -> 1; 100% -> 3.
#  (C,A): pos {6,9} -> (0,1,1): H = ln 2 = 0.6931471806; top-X: 1/2 = 50% exactly -> 1; 100% -> 2.
#  (B,C): pos {0,4,5,8} -> (1,2,1); neg {1,6,9} -> (1,1,1).
#         H = ln 4 - (2 ln 2)/4 = 1.5 ln 2 = 1.0397207708; top-X: 2/4 = 50% exactly -> 1; 100% -> 3.
#  (C,B): pos {1,6,9} -> (1,1,1), uniform: H = ln 3 = 1.0986122887;
#         top-X: 1/3 = 33% >= 2,5,20% -> 1; 50% needs 2 (2/3); 100% -> 3.
HAND_EXPECTED = {
    # (t, s): (acc_t, acc_s, delta_acc, n_pos, n_neg, rho_pos, rho_neg, entropy, top-X counts)
    ("A", "B"): (0.7, 0.4, 0.3, 4, 1, 0.4, 0.1, 0.5623351446, (1, 1, 1, 1, 2)),
    ("A", "C"): (0.7, 0.3, 0.4, 6, 2, 0.6, 0.2, 1.0114042647, (1, 1, 1, 1, 3)),
    ("B", "A"): (0.4, 0.7, -0.3, 1, 4, 0.1, 0.4, 0.0, (1, 1, 1, 1, 1)),
    ("B", "C"): (0.4, 0.3, 0.1, 4, 3, 0.4, 0.3, 1.0397207708, (1, 1, 1, 1, 3)),
    ("C", "A"): (0.3, 0.7, -0.4, 2, 6, 0.2, 0.6, 0.6931471806, (1, 1, 1, 1, 2)),
    ("C", "B"): (0.3, 0.4, -0.1, 3, 4, 0.3, 0.4, 1.0986122887, (1, 1, 1, 2, 3)),
}
# (t, s) -> {class: (pos_flips, neg_flips)}, classes without a flip omitted; reverse pairs swap pos/neg
HAND_CLASSES = {
    ("A", "B"): {0: (3, 0), 2: (1, 1)},
    ("A", "C"): {0: (3, 0), 1: (2, 1), 2: (1, 1)},
    ("B", "C"): {0: (1, 1), 1: (2, 1), 2: (1, 1)},
}


def test_hand_computed_example_every_number():
    pairs, classes = score_pairs(_hand_predictions())
    assert pairs.schema.equals(PAIR_SCHEMA) and classes.schema.equals(PAIR_CLASS_SCHEMA)
    rows = pairs.to_pylist()
    assert [(r["teacher"], r["student"]) for r in rows] == sorted(HAND_EXPECTED)  # sorted by teacher, student
    for r in rows:
        acc_t, acc_s, delta, n_pos, n_neg, rho_pos, rho_neg, ent, top = HAND_EXPECTED[(r["teacher"], r["student"])]
        assert r["teacher_is_random"] is False
        assert (r["n_samples"], r["num_classes"]) == (10, 3)
        assert r["acc_t"] == pytest.approx(acc_t) and r["acc_s"] == pytest.approx(acc_s)
        assert r["delta_acc"] == pytest.approx(delta)
        assert (r["n_pos"], r["n_neg"]) == (n_pos, n_neg)
        assert r["rho_pos"] == pytest.approx(rho_pos) and r["rho_neg"] == pytest.approx(rho_neg)
        assert r["entropy"] == pytest.approx(ent, abs=1e-9)
        assert tuple(r[f"top{x}_classes"] for x in TOP_X_PERCENTS) == top

    expected_rows = []
    for (t, s), per_class in HAND_CLASSES.items():
        for k, (p, n) in per_class.items():
            expected_rows.append({"teacher": t, "student": s, "class_id": k, "pos_flips": p, "neg_flips": n})
            expected_rows.append({"teacher": s, "student": t, "class_id": k, "pos_flips": n, "neg_flips": p})
    key = lambda r: (r["teacher"], r["student"], r["class_id"])  # noqa: E731
    assert classes.to_pylist() == sorted(expected_rows, key=key)  # also checks the row order


def test_hand_example_explicit_pair_and_row_order_do_not_matter():
    shuffled, _ = score_pairs(_hand_predictions(shuffle_b=True), [("C", "B")])
    plain, _ = score_pairs(_hand_predictions(shuffle_b=False), [("C", "B")])
    assert shuffled.equals(plain)
    assert shuffled.num_rows == 1 and shuffled.column("entropy")[0].as_py() == pytest.approx(math.log(3))


# --------------------------------------------------------------------------------- slow reference check
def _reference(preds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], t: str, s: str, num_classes: int):
    """Obviously-correct per-pair scoring: plain Python over samples, sorted(), log per class."""
    sid_t, y_t, p_t = preds[t]
    sid_s, y_s, p_s = preds[s]
    right_t = {int(i): int(p) == int(y) for i, y, p in zip(sid_t, y_t, p_t)}
    right_s = {int(i): int(p) == int(y) for i, y, p in zip(sid_s, y_s, p_s)}
    label = {int(i): int(y) for i, y in zip(sid_t, y_t)}
    n = len(label)
    pos = [0] * num_classes
    neg = [0] * num_classes
    for i in label:
        if right_t[i] and not right_s[i]:
            pos[label[i]] += 1
        if right_s[i] and not right_t[i]:
            neg[label[i]] += 1
    n_pos, n_neg = sum(pos), sum(neg)
    entropy = None if n_pos == 0 else -sum(c / n_pos * math.log(c / n_pos) for c in pos if c)
    tops = []
    for x in TOP_X_PERCENTS:
        if n_pos == 0:
            tops.append(0)
            continue
        cum, m = 0, 0
        for c in sorted(pos, reverse=True):
            cum += c
            m += 1
            if cum * 100 >= x * n_pos:
                break
        tops.append(m)
    acc_t = sum(right_t.values()) / n
    acc_s = sum(right_s.values()) / n
    row = {
        "teacher": t, "student": s, "n_samples": n, "num_classes": num_classes, "acc_t": acc_t, "acc_s": acc_s,
        "delta_acc": acc_t - acc_s, "n_pos": n_pos, "n_neg": n_neg, "rho_pos": n_pos / n, "rho_neg": n_neg / n,
        "entropy": entropy, **{f"top{x}_classes": v for x, v in zip(TOP_X_PERCENTS, tops)},
    }  # fmt: skip
    classes = {k: (pos[k], neg[k]) for k in range(num_classes) if pos[k] or neg[k]}
    return row, classes


def _random_zoo(n_models: int, n: int, label_probs: np.ndarray, seed: int):
    """Random predictions with correlated errors; each table's rows in its own random order."""
    rng = np.random.default_rng(seed)
    c = label_probs.size
    labels = rng.choice(c, size=n, p=label_probs)
    hard = rng.random(n)
    sids = rng.choice(10 * n, size=n, replace=False)
    raw, tables = {}, {}
    for m in range(n_models):
        right = rng.random(n) * 0.6 + hard * 0.4 < rng.uniform(0.3, 0.8)
        pred = np.where(right, labels, (labels + rng.integers(1, c, n)) % c)
        order = rng.permutation(n)
        mid = f"model-{m}"
        raw[mid] = (sids[order], labels[order], pred[order])
        tables[mid] = _table(sids[order], labels[order], pred[order], mid)
    return raw, tables


def _check_against_reference(raw, tables, num_classes, **kwargs):
    pairs, classes = score_pairs(tables, num_classes=num_classes, **kwargs)
    got_rows = {(r["teacher"], r["student"]): r for r in pairs.to_pylist()}
    got_classes: dict = {}
    for r in classes.to_pylist():
        got_classes.setdefault((r["teacher"], r["student"]), {})[r["class_id"]] = (r["pos_flips"], r["neg_flips"])
    expected_pairs = list(permutations(sorted(tables), 2))
    assert sorted(got_rows) == expected_pairs
    for t, s in expected_pairs:
        ref_row, ref_classes = _reference(raw, t, s, num_classes)
        row = dict(got_rows[(t, s)])
        assert row.pop("teacher_is_random") is False
        for name, value in ref_row.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, abs=1e-12), (t, s, name)
            else:
                assert row[name] == value, (t, s, name)
        assert got_classes.get((t, s), {}) == ref_classes, (t, s)
    return pairs, classes


def _paths(tables, num_classes):
    """Which internal paths scoring takes: (every class in one 64-bit word, top-X by histogram)."""
    packed = sc_counts._PackedCorrectness(align_predictions(tables, num_classes))
    t, s, _ = sc_scoring._resolve_pairs(align_predictions(tables, num_classes), None, ())
    pos = packed.right[t] - packed.both_correct(t, s)
    return packed.one_word, sc_counts._use_hist(int(pos.max()), num_classes)


def test_all_pairs_match_slow_reference_balanced_classes():
    raw, tables = _random_zoo(6, 500, np.full(20, 1 / 20), seed=1)
    assert _paths(tables, 20) == (True, False)  # one word per class, top-X by sorting
    pairs, _ = _check_against_reference(raw, tables, num_classes=20)
    # rho_pos(t, s) == rho_neg(s, t) for every pair
    rho = {(r["teacher"], r["student"]): (r["rho_pos"], r["rho_neg"]) for r in pairs.to_pylist()}
    for (t, s), (pos, _) in rho.items():
        assert pos == rho[(s, t)][1]


def test_all_pairs_match_reference_imbalanced_and_absent_classes_small_chunks():
    # class 0 holds ~40% of 500 samples (several 64-bit words), classes 18-21 never occur
    probs = np.r_[0.4, np.full(17, 0.6 / 17), np.zeros(4)]
    raw, tables = _random_zoo(5, 500, probs, seed=2)
    assert _paths(tables, 22)[0] is False  # multi-word classes: per-class sums over words
    pairs, classes = _check_against_reference(raw, tables, num_classes=22, chunk_elements=50)
    default_pairs, default_classes = score_pairs(tables, num_classes=22)
    assert pairs.equals(default_pairs) and classes.equals(default_classes)  # chunking changes nothing


def test_all_pairs_match_reference_many_small_classes():
    # 100 classes of ~6 samples: few flips per class, so top-X and entropy use the histogram path
    raw, tables = _random_zoo(4, 600, np.full(100, 0.01), seed=10)
    assert _paths(tables, 100) == (True, True)
    _check_against_reference(raw, tables, num_classes=100)


def test_iter_pair_scores_chunks_concatenate_to_score_pairs():
    _, tables = _random_zoo(4, 200, np.full(10, 0.1), seed=3)
    chunks = list(iter_pair_scores(tables, chunk_elements=30))
    assert len(chunks) == 4  # 12 pairs, 3 per chunk of 30 cells / 10 classes
    pairs, classes = score_pairs(tables)
    assert pa.concat_tables([c[0] for c in chunks]).equals(pairs)
    assert pa.concat_tables([c[1] for c in chunks]).equals(classes)
    only_pairs, no_classes = score_pairs(tables, with_classes=False)
    assert only_pairs.equals(pairs) and no_classes.num_rows == 0 and no_classes.schema.equals(PAIR_CLASS_SCHEMA)


def test_popcount_fallback_matches_numpy():
    words = np.random.default_rng(4).integers(0, 2**63, size=(7, 5), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    expected = np.array([[bin(int(w)).count("1") for w in row] for row in words])
    assert np.array_equal(sc_counts._popcount_table(words), expected)
    assert np.array_equal(sc_counts._popcount(words), expected)


# ------------------------------------------------------------------------------- entropy and top-X%
@pytest.mark.parametrize("num_classes", [2, 3, 20, 1000])
def test_entropy_of_uniform_flips_is_ln_c(num_classes):
    counts = np.full((2, num_classes), 7, dtype=np.int64)
    assert entropy_from_counts(counts) == pytest.approx([math.log(num_classes)] * 2, abs=1e-12)
    # the histogram path used inside scoring agrees
    _, ent, _, _ = sc_counts._flip_stats(counts)
    assert ent == pytest.approx([math.log(num_classes)] * 2, abs=1e-12)


def test_entropy_single_class_is_zero_and_no_flips_is_nan():
    ent = entropy_from_counts(np.array([[0, 9, 0, 0], [0, 0, 0, 0], [1, 3, 0, 0]]))
    assert ent[0] == 0.0 and math.isnan(ent[1])
    assert ent[2] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


@pytest.mark.parametrize("method", ["sort", "hist", "auto"])
@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # ties: four equal classes; 50% is reached exactly by 2 of them, 100% by all 4
        ([5, 5, 5, 5], (1, 1, 1, 2, 4)),
        # 50 classes with one flip each: each holds exactly 2%, so 2% -> 1, 5% -> 3 (2.5 rounds up),
        # 20% -> 10, 50% -> 25, 100% -> 50
        ([1] * 50, (1, 3, 10, 25, 50)),
        # one class holds every flip
        ([0, 0, 12, 0], (1, 1, 1, 1, 1)),
        # no flips at all
        ([0, 0, 0], (0, 0, 0, 0, 0)),
        # 20% exactly: 1 of 5 -> 1; 50%: 2 of 5 is 40% < 50% -> 3 (the ties are interchangeable)
        ([1, 1, 1, 1, 1], (1, 1, 1, 3, 5)),
        # shares 60/20/10/10: 50% -> 1, 100% -> 4 (zeros never count)
        ([0, 6, 0, 2, 1, 1], (1, 1, 1, 1, 4)),
    ],
)
def test_top_x_edge_cases(counts, expected, method):
    got = top_x_counts(np.array([counts], dtype=np.int64), method=method)
    assert tuple(got[0]) == expected


def test_top_x_methods_agree_with_python_reference_on_random_rows():
    rng = np.random.default_rng(5)
    counts = rng.poisson(rng.uniform(0.05, 4, size=(300, 1)), size=(300, 40)).astype(np.int64)
    counts[:5] = 0  # rows without flips
    counts[5:10] = 3  # all ties
    expected = []
    for row in counts:
        total = int(row.sum())
        tops = []
        for x in TOP_X_PERCENTS:
            cum = m = 0
            if total:
                for c in sorted(row.tolist(), reverse=True):
                    cum, m = cum + c, m + 1
                    if cum * 100 >= x * total:
                        break
            tops.append(m)
        expected.append(tops)
    for method in ("sort", "hist"):
        assert np.array_equal(top_x_counts(counts, method=method), np.array(expected)), method


def test_top_x_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        top_x_counts(np.array([[1, -1]]))
    with pytest.raises(ValueError, match="percents"):
        top_x_counts(np.array([[1, 1]]), percents=(0, 50))
    with pytest.raises(ValueError, match="method"):
        top_x_counts(np.array([[1, 1]]), method="magic")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ pair selection
IDS = [f"m{i}" for i in range(7)]


def test_random_pairs_seeded_no_self_pairs_no_duplicates():
    a = random_pairs(IDS, 20, seed=3)
    assert a == random_pairs(IDS, 20, seed=3)
    assert a == random_pairs(list(reversed(IDS)), 20, seed=3)  # input order does not matter
    assert a != random_pairs(IDS, 20, seed=4)
    assert len(a) == len(set(a)) == 20
    assert all(t != s and t in IDS and s in IDS for t, s in a)
    every = random_pairs(IDS, 42, seed=0)  # k = N(N-1): every ordered pair exactly once
    assert sorted(every) == select_pairs(IDS, "all")


def test_random_pairs_k_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match=r"k=43 exceeds the 42 ordered pairs"):
        random_pairs(IDS, 43)
    with pytest.raises(ValueError, match="non-negative integer"):
        random_pairs(IDS, -1)


def test_select_pairs_modes_and_validation():
    assert select_pairs(IDS[:3]) == [("m0", "m1"), ("m0", "m2"), ("m1", "m0"), ("m1", "m2"), ("m2", "m0"), ("m2", "m1")]
    assert select_pairs(IDS, "random", k=5, seed=1) == random_pairs(IDS, 5, seed=1)
    assert select_pairs(IDS, "explicit", explicit=[("m1", "m0"), ("m1", "m0"), ("m2", "m0")]) == [
        ("m1", "m0"),
        ("m2", "m0"),
    ]  # duplicates dropped, order kept
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['nope'\]; valid ids: \['m0'"):
        select_pairs(IDS, "explicit", explicit=[("m0", "nope")])
    with pytest.raises(ValueError, match="same model as teacher and student"):
        select_pairs(IDS, "explicit", explicit=[("m0", "m0")])
    with pytest.raises(ValueError, match="unknown pair mode 'some'"):
        select_pairs(IDS, "some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs k"):
        select_pairs(IDS, "random")
    with pytest.raises(ValueError, match="only used with mode='random'"):
        select_pairs(IDS, "all", k=3)
    with pytest.raises(ValueError, match="unique"):
        select_pairs(["a", "a", "b"])
    assert PairSelection(pairs="random", k=4, seed=2).resolve(IDS) == random_pairs(IDS, 4, seed=2)


def test_pair_selection_is_the_score_config_section():
    import tomllib

    from pydantic import ValidationError

    sel = PairSelection.model_validate({"pairs": "random", "k": 3, "seed": 1})
    assert sel.resolve(IDS) == random_pairs(IDS, 3, seed=1)
    toml = PairSelection.model_validate(tomllib.loads('pairs = "explicit"\nexplicit = [["m1", "m0"], ["m2", "m0"]]'))
    assert toml.explicit == [("m1", "m0"), ("m2", "m0")] and toml.resolve(IDS) == [("m1", "m0"), ("m2", "m0")]
    assert PairSelection.model_validate(PairSelection().model_dump(mode="json")) == PairSelection()
    assert PairSelection().resolve(IDS[:3]) == select_pairs(IDS[:3])
    for raw, needles in [
        ({"pairs": "random"}, ["score.k", "random"]),
        ({"pairs": "explicit"}, ["score.explicit", "explicit"]),
        ({"pairs": "all", "k": 3}, ["score.k=3", "'all'", "random"]),
        ({"pairs": "all", "explicit": [["m0", "m1"]]}, ["score.explicit", "'all'"]),
        ({"pairs": "some"}, ["pairs", "some", "'all', 'random' or 'explicit'"]),
        ({"pairs": "random", "k": 0}, ["k", "greater than or equal to 1"]),
        ({"seed": -1}, ["seed", "greater than or equal to 0"]),
        ({"mode": "all"}, ["mode", "Extra inputs are not permitted"]),
    ]:
        with pytest.raises(ValidationError) as exc:
            PairSelection.model_validate(raw)
        for needle in needles:
            assert needle in str(exc.value), (raw, needle)
    with pytest.raises(ValidationError):
        sel.k = 4  # frozen
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['nope'\]"):
        PairSelection(pairs="explicit", explicit=[("m0", "nope")]).resolve(IDS)


def test_score_pairs_with_selection_and_unknown_ids():
    _, tables = _random_zoo(5, 100, np.full(4, 0.25), seed=6)
    sel = PairSelection(pairs="random", k=7, seed=0)
    pairs, _ = score_pairs(tables, sel)
    assert sorted(zip(pairs.column("teacher").to_pylist(), pairs.column("student").to_pylist())) == sorted(
        sel.resolve(tables)
    )
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['ghost'\]; valid ids: \['model-0', 'model-1'"):
        score_pairs(tables, [("ghost", "model-1")])


# ---------------------------------------------------------------------------------------- noise floor
def test_random_teachers_scored_against_every_student_and_flagged():
    _, tables = _random_zoo(5, 200, np.full(10, 0.1), seed=7)
    rand = ["model-3", "model-4"]
    pairs, classes = score_pairs(tables, [("model-0", "model-1")], random_teachers=rand)
    got = {(r["teacher"], r["student"]): r["teacher_is_random"] for r in pairs.to_pylist()}
    expected = {("model-0", "model-1"): False}
    expected.update({(r, s): True for r in rand for s in ("model-0", "model-1", "model-2")})
    assert got == expected  # random models are never students, not even of each other
    assert set(zip(classes.column("teacher").to_pylist(), classes.column("student").to_pylist())) <= set(expected)
    # all pairs (None) = every ordered pair of the real models, plus the noise-floor rows
    pairs_all, _ = score_pairs(tables, None, random_teachers=rand)
    assert pairs_all.num_rows == 3 * 2 + 2 * 3
    assert sum(pairs_all.column("teacher_is_random").to_pylist()) == 6


def test_random_model_as_student_is_rejected():
    _, tables = _random_zoo(3, 50, np.full(5, 0.2), seed=8)
    with pytest.raises(ValueError, match="noise-floor teachers only, never students"):
        score_pairs(tables, [("model-0", "model-2")], random_teachers=["model-2"])
    with pytest.raises(ValueError, match=r"random teachers \['ghost'\] have no predictions"):
        score_pairs(tables, random_teachers=["ghost"])


def test_noise_floor_teacher_has_chance_level_rho_pos():
    # a "random" model predicting uniformly over 100 classes is right ~1% of the time
    rng = np.random.default_rng(9)
    n, c = 5000, 100
    labels = rng.integers(0, c, n)
    sids = np.arange(n)
    tables = {
        "good": _table(sids, labels, np.where(rng.random(n) < 0.8, labels, (labels + 1) % c), "good"),
        "ok": _table(sids, labels, np.where(rng.random(n) < 0.6, labels, (labels + 1) % c), "ok"),
        "noise": _table(sids, labels, rng.integers(0, c, n), "noise"),
    }
    pairs, _ = score_pairs(tables, random_teachers=["noise"])
    rho = {(r["teacher"], r["student"]): r["rho_pos"] for r in pairs.to_pylist()}
    assert rho[("noise", "good")] < 0.01 and rho[("noise", "ok")] < 0.01
    assert rho[("good", "ok")] > 0.1


# ------------------------------------------------------------------------------------------ alignment
def test_different_sample_ids_raise_naming_both_models():
    preds = _hand_predictions()
    preds["C"] = preds["C"].slice(0, 9)  # drops sample id 190
    with pytest.raises(ValueError, match=r"'A' and 'C' cover different samples: 'A' has 10 samples, 'C' has 9; "
                                         r"1 sample ids only in 'A' \(first: 190\)"):
        score_pairs(preds)
    preds = _hand_predictions()
    t = preds["B"]
    preds["B"] = t.set_column(t.schema.get_field_index("sample_id"), "sample_id", pa.array([7] + t.column("sample_id").to_pylist()[1:], pa.int64()))
    with pytest.raises(ValueError, match=r"only in 'B' \(first: 7\)"):
        score_pairs(preds)


def test_disagreeing_labels_raise_with_first_sample():
    preds = _hand_predictions(shuffle_b=False)
    labels = list(HAND_LABELS)
    labels[4] = 2  # sample id 140
    preds["C"] = _table([100 + 10 * i for i in range(10)], labels, [0] * 10, "C")
    with pytest.raises(ValueError, match=r"'A' and 'C' disagree on labels for 1 of 10 samples; first at sample id 140: label 1 vs 2"):
        score_pairs(preds)


def test_other_bad_prediction_tables():
    with pytest.raises(ValueError, match="repeat sample ids"):
        align_predictions({"x": _table([1, 2, 2], [0, 1, 1], [0, 1, 1])})
    with pytest.raises(ValueError, match="lack column 'pred'"):
        align_predictions({"x": pa.table({"sample_id": [1], "label": [0]})})
    with pytest.raises(ValueError, match="no prediction tables"):
        align_predictions({})
    with pytest.raises(ValueError, match="num_classes=2 but the labels go up to 2"):
        align_predictions({"x": _table([1, 2], [0, 2], [0, 2])}, num_classes=2)
    with pytest.raises(ValueError, match="null values in column 'pred'"):
        align_predictions({"x": pa.table({"sample_id": [1, 2], "label": [0, 1], "pred": pa.array([0, None], pa.int32())})})


def test_no_pairs_gives_empty_tables_with_the_schemas():
    pairs, classes = score_pairs({"only": _table([1, 2], [0, 1], [0, 0])})
    assert pairs.num_rows == 0 and pairs.schema.equals(PAIR_SCHEMA)
    assert classes.num_rows == 0 and classes.schema.equals(PAIR_CLASS_SCHEMA)


# ------------------------------------------------------------------ bias-corrected entropy (claim 2)
def test_corrected_entropy_on_hand_computed_cases() -> None:
    from zoo_study.scoring.counts import entropy_corrected_from_counts

    # two classes with one flip each: G(1) = psi(1) - (psi(1) - psi(1/2)) / 2 = -gamma - ln 2, so
    # H = ln 2 - (1/2) * 2 * G(1) = 2 ln 2 + gamma
    gamma = 0.5772156649015329
    # one class with 2 flips: G(2) = psi(2) + (psi(3/2) - psi(1)) / 2 = (1 - gamma) + (2 - 2 ln 2) / 2
    # = 2 - gamma - ln 2, so H = ln 2 - G(2) = 2 ln 2 + gamma - 2
    got = entropy_corrected_from_counts(np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert got[0] == pytest.approx(2 * math.log(2) + gamma, abs=1e-12)
    assert got[1] == pytest.approx(max(2 * math.log(2) + gamma - 2, 0.0), abs=1e-12)
    assert math.isnan(got[2])


def test_corrected_entropy_is_unbiased_on_uniform_flips_where_the_plug_in_is_not() -> None:
    """100 flips drawn uniformly over 100 classes, 2,000 simulations: the plug-in entropy misses ln 100
    by about -0.57 nats (ten times its spread); the corrected one lands within its own spread."""
    from zoo_study.scoring.counts import entropy_corrected_from_counts

    rng = np.random.default_rng(0)
    counts = np.stack([np.bincount(rng.integers(0, 100, 100), minlength=100) for _ in range(2000)])
    truth = math.log(100)
    plug, corr = entropy_from_counts(counts), entropy_corrected_from_counts(counts)
    assert abs(plug.mean() - truth) > 5 * plug.std()
    assert abs(corr.mean() - truth) < 0.5 * corr.std()


def test_score_pairs_writes_the_corrected_entropy_and_the_students_error_profile_as_null() -> None:
    # 3 classes, 6 samples; the student is wrong on samples 0, 1 (class 0) and 4 (class 2)
    labels = np.array([0, 0, 1, 1, 2, 2])
    teacher = np.array([0, 0, 1, 0, 2, 2])  # right on 0, 1, 2, 4, 5
    student = np.array([1, 1, 1, 1, 0, 2])  # right on 2, 3, 5
    ids = np.arange(6)
    preds = {"t": _table(ids, labels, teacher, "t"), "s": _table(ids, labels, student, "s")}
    pairs, _ = score_pairs(preds, [("t", "s")], num_classes=3)
    row = pairs.to_pylist()[0]
    # positive flips: samples 0, 1 (class 0) and 4 (class 2): counts [2, 0, 1]
    assert row["entropy_corrected"] == pytest.approx(grassberger_entropy([2, 0, 1]))  # the per-class loop
    # the student's errors per class are [2, 0, 1] too: null = plug-in entropy of (2/3, 1/3)
    assert row["entropy_null"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))


def test_pair_kappa_is_cohens_kappa_of_the_correctness_vectors() -> None:
    # 8 samples of one class; teacher right on 0-5, student right on 2-7
    labels = np.zeros(8, dtype=int)
    teacher = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    student = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    ids = np.arange(8)
    pairs, _ = score_pairs({"t": _table(ids, labels, teacher, "t"), "s": _table(ids, labels, student, "s")},
                           [("t", "s")], num_classes=2)
    # both right on 2-5 (4), both wrong on none: p_o = 4/8; p_e = 0.75 * 0.75 + 0.25 * 0.25 = 0.625
    # kappa = (0.5 - 0.625) / (1 - 0.625) = -1/3
    assert pairs.column("kappa")[0].as_py() == pytest.approx(-1 / 3)
    # a model right everywhere against another: chance agreement 1 only if both are; here p_e < 1
    all_right = np.zeros(8, dtype=int)
    pairs, _ = score_pairs({"a": _table(ids, labels, all_right, "a"), "b": _table(ids, labels, all_right, "b")},
                           [("a", "b")], num_classes=2)
    assert pairs.column("kappa")[0].as_py() is None  # both always right: kappa undefined
