"""Fig 2b's measures on hand-built classes: similarity of a class set, the seeded random baseline, the exact
super-class share and its chance level, the lexical encoder, and the table the semantics stage writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from zoo_study.scoring.semantics import (
    LexicalEncoder,
    mean_pairwise,
    pair_seed,
    random_set_similarity,
    same_super_chance,
    same_super_share,
    semantic_tables,
    text_encoder,
    top_x_classes,
)
from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA, TOP_X_PERCENTS


class FixedEncoder:
    """Known unit vectors: classes 0 and 1 identical, 2 orthogonal to them, 3 at 60 degrees to 0."""

    name = "fixed"

    def encode(self, texts):
        v = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0, np.sqrt(0.75)]], dtype=np.float32)
        return v[: len(texts)]


def test_mean_pairwise_similarity_of_a_hand_built_set():
    v = FixedEncoder().encode(["a", "b", "c", "d"]).astype(float)
    sim = v @ v.T
    # pairs of {0, 1, 3}: (0,1) = 1, (0,3) = 0.5, (1,3) = 0.5 -> 2/3
    assert mean_pairwise(sim, np.array([0, 1, 3])) == pytest.approx(2 / 3)
    assert mean_pairwise(sim, np.array([0, 2])) == pytest.approx(0.0)
    assert mean_pairwise(sim, np.array([2])) is None  # no pair
    # all 6 pairs: 1 + 0 + 0.5 + 0 + 0.5 + 0 = 2 -> 1/3
    assert mean_pairwise(sim, np.arange(4)) == pytest.approx(1 / 3)


def test_top_classes_break_ties_by_class_id_and_super_class_share_is_exact():
    assert top_x_classes(np.array([3, 5, 5, 0, 1]), 3).tolist() == [1, 2, 0]
    sup = np.array([0, 0, 0, 1, 1, 2])  # super-classes of sizes 3, 2, 1
    # {0, 1, 3}: pairs (0,1) same, (0,3) and (1,3) not -> 1/3
    assert same_super_share(np.array([0, 1, 3]), sup) == pytest.approx(1 / 3)
    assert same_super_share(np.array([4]), sup) is None
    # chance: (3*2 + 2*1 + 0) / (6*5) = 8/30, and a random set's share averages to it
    assert same_super_chance(sup) == pytest.approx(8 / 30)
    rng = np.random.default_rng(0)
    draws = [same_super_share(rng.choice(6, size=3, replace=False), sup) for _ in range(20000)]
    assert np.mean(draws) == pytest.approx(8 / 30, abs=0.01)


def test_random_baseline_is_seeded_per_pair_and_brackets_its_mean():
    v = FixedEncoder().encode(["a", "b", "c", "d"]).astype(float)
    sim = v @ v.T
    a = random_set_similarity(sim, 2, 500, pair_seed(0, "t", "s", 5))
    assert a == random_set_similarity(sim, 2, 500, pair_seed(0, "t", "s", 5))  # the same seed, the same numbers
    assert pair_seed(0, "t", "s", 5) != pair_seed(0, "t2", "s", 5) != pair_seed(1, "t", "s", 5)
    mean, lo, hi = a
    assert lo <= mean <= hi and mean == pytest.approx(1 / 3, abs=0.05)  # pairs drawn uniformly: the all-pairs mean
    assert random_set_similarity(sim, 1, 10, 0) is None


def test_lexical_encoder_sees_shared_words_and_encoders_are_named():
    names = ["striped red circle", "striped blue circle", "dotted green square", "Boston terrier", "Irish terrier"]
    e = LexicalEncoder().encode(names)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[3, 4] > sim[3, 0]
    assert text_encoder("lexical").name == "lexical" and text_encoder("clip:/m").name == "clip:/m"
    with pytest.raises(ValueError, match="valid: \"lexical\""):
        text_encoder("glove")
    with pytest.raises(ValueError, match="clip:/no/such/folder"):
        text_encoder("clip:/no/such/folder").encode(["cat"])


def test_semantic_tables_from_pair_tables():
    # one pair, 4 classes with super-classes {0,1} and {2,3}; flips 6, 3, 1, 0 over classes 0..3
    flips = [6, 3, 1, 0]
    total = sum(flips)
    tops = {}
    for x in TOP_X_PERCENTS:  # the smallest prefix with >= X% of the flips
        need = x / 100 * total
        tops[x] = next(i + 1 for i in range(4) if sum(flips[: i + 1]) >= need - 1e-9)
    pair = {"teacher": "t", "student": "s", "teacher_is_random": False, "n_samples": 100, "num_classes": 4,
            "acc_t": 0.6, "acc_s": 0.5, "delta_acc": 0.1, "n_pos": total, "n_neg": 0, "rho_pos": 0.1,
            "rho_neg": 0.0, "entropy": 1.0, **{f"top{x}_classes": tops[x] for x in TOP_X_PERCENTS}}
    pairs = pa.Table.from_pylist([pair], schema=PAIR_SCHEMA)
    pc = pa.Table.from_pylist([{"teacher": "t", "student": "s", "class_id": k, "pos_flips": f, "neg_flips": 0}
                               for k, f in enumerate(flips)], schema=PAIR_CLASS_SCHEMA)
    emb, sem = semantic_tables(pairs, pc, ["a", "b", "c", "d"], [0, 0, 1, 1], ["A", "B"], FixedEncoder(),
                               random_sets=50, seed=0)
    assert emb.num_rows == 4 and emb.column("superclass_name").to_pylist() == ["A", "A", "B", "B"]
    rows = {r["x_pct"]: r for r in sem.to_pylist()}
    assert set(rows) == set(TOP_X_PERCENTS)
    r50 = rows[50]  # 5 of 10 flips: class 0 alone (6) -> one class, no pair
    assert r50["n_classes"] == 1 and r50["sim_top"] is None and r50["same_super_share"] is None
    r100 = rows[100]  # classes 0, 1, 2 (class 3 has no flip): pairs (0,1)=1, (0,2)=0, (1,2)=0 -> 1/3
    assert r100["n_classes"] == 3 and r100["sim_top"] == pytest.approx(1 / 3)
    assert r100["same_super_share"] == pytest.approx(1 / 3)
    assert r100["same_super_chance"] == pytest.approx((2 + 2) / 12)
    assert r100["sim_all"] == pytest.approx(1 / 3) and r100["encoder"] == "fixed"
