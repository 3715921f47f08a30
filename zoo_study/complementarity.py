"""Complementary knowledge between pretrained classifiers, scored from cached predictions.

What is computed (METHOD.md section 1), for a teacher t and a student s on the n samples of the
evaluation split:

- positive flip of sample i: t right and s wrong; ``rho_pos = n_pos / n`` ("complementary knowledge"
  of t w.r.t. s). Negative flip: t wrong and s right; ``rho_neg = n_neg / n``. rho_pos(t,s) = rho_neg(s,t).
- ``delta_acc = acc_t - acc_s`` (equal to rho_pos - rho_neg).
- per-class positive flips c_k, their shares q_k = c_k / sum c and the entropy H = -sum q_k ln q_k
  (nats; null when there is no positive flip).
- top-X% classes: the size of the smallest prefix of classes, sorted by c_k descending, whose
  cumulative share of positive flips is >= X%, for X in ``TOP_X_PERCENTS``. It is counted on integers
  (``cumsum * 100 >= X * total``) so that shares exactly at a threshold are never lost to rounding.

Why the computation looks the way it does:

- Pairs are never scored by re-running models: every model's predictions are cached once
  (``predictions/model=<id>.parquet``) and all pairs are derived from the N x n boolean correctness
  matrix, so scoring all N^2 pairs costs far less than the N prediction passes.
- Only the "both correct" counts need pair-wise work: with ``both[t,s,k]`` = samples of class k that
  t and s both get right and ``right[m,k]`` = samples of class k that m gets right,
  ``pos[t,s,k] = right[t,k] - both[t,s,k]`` and ``neg[t,s,k] = right[s,k] - both[t,s,k]``.
  ``both`` is the same quantity as the per-class matrix product ``C_k @ C_k.T``; it is computed as a
  packed bit count: samples are sorted by label, each class is packed into 64-bit words and
  ``both[t,s,k] = popcount(bits[t] & bits[s])`` over class k's words. That is ~n/64 word operations
  per pair (one word per class on ImageNet-val), needs no float exactness argument, produces the
  (pair, class) layout the outputs need without a transpose, and computes only the selected pairs.
- Memory: a full N x N x C count cube for N=300, C=1000 is 720 MB per int64 array, so the selected
  pairs are processed in chunks of about ``chunk_elements`` (pair, class) cells (tens of MB of work
  buffers). ``iter_pair_scores`` yields one pair of Arrow tables per chunk so that a caller can stream
  them to Parquet; ``score_pairs`` concatenates them.
- ``pair_classes`` keeps only the (pair, class) rows with at least one positive or negative flip: a
  class that is absent for a pair has zero flips both ways. This keeps sparse results small; for
  dense all-pairs scoring of a big zoo it is still up to N^2 * C rows (89.7M for 300 models and 1000
  classes, several GB in memory), which is why the streaming iterator and ``with_classes`` exist.
- Noise-floor teachers (randomly initialised models) are scored as teachers against every non-random
  student, in addition to the selected pairs, and never as students: their purpose is the chance level
  of rho_pos (paper: ~0.03% for a random ResNet50 on ImageNet), which is a property of the teacher.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa

from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA, TOP_X_PERCENTS

Pair = tuple[str, str]
PairMode = Literal["all", "random", "explicit"]
PAIR_MODES: tuple[str, ...] = ("all", "random", "explicit")

#: default number of (pair, class) cells scored per chunk: ~1M cells keeps a chunk's work buffers (a few
#: int64 arrays of that size) at tens of MB; larger chunks measured slower (more page faults, less cache).
DEFAULT_CHUNK_ELEMENTS = 1 << 20

_PREDICTION_COLUMNS = ("sample_id", "label", "pred")


# ------------------------------------------------------------------------------------------ pair choice
def _check_model_ids(model_ids: Iterable[str]) -> list[str]:
    ids = list(model_ids)
    for m in ids:
        if not isinstance(m, str) or not m:
            raise ValueError(f"model ids must be non-empty strings, got {m!r}")
    dups = sorted(m for m, c in Counter(ids).items() if c > 1)
    if dups:
        raise ValueError(f"model ids must be unique; repeated: {dups}")
    return sorted(ids)


def _format_ids(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(m) for m in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}] ({len(ids)} models)"


def all_pairs(model_ids: Iterable[str]) -> list[Pair]:
    """Every ordered (teacher, student) pair of distinct models, sorted by teacher then student."""
    ids = _check_model_ids(model_ids)
    return [(t, s) for t in ids for s in ids if t != s]


def random_pairs(model_ids: Iterable[str], k: int, seed: int = 0) -> list[Pair]:
    """``k`` distinct ordered pairs (teacher != student) drawn uniformly without repetition.

    Why sorted ids first: the draw then depends only on the set of models and the seed, not on the
    order a catalog happened to list them in, so a study is reproducible from its config.
    """
    ids = _check_model_ids(model_ids)
    n = len(ids)
    total = n * (n - 1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k > total:
        raise ValueError(
            f"k={k} exceeds the {total} ordered pairs (N*(N-1) with N={n}) of models {_format_ids(ids)}"
        )
    rng = np.random.default_rng(seed)
    flat = rng.choice(total, size=int(k), replace=False)
    # flat index j -> teacher j // (N-1); the student skips the teacher's own index.
    t = flat // max(n - 1, 1)
    r = flat % max(n - 1, 1)
    s = np.where(r < t, r, r + 1)
    return [(ids[a], ids[b]) for a, b in zip(t.tolist(), s.tolist())]


def explicit_pairs(model_ids: Iterable[str], pairs: Iterable[Sequence[str]]) -> list[Pair]:
    """Validate a given list of (teacher, student) pairs; duplicates are dropped, order kept."""
    ids = _check_model_ids(model_ids)
    valid = set(ids)
    out: list[Pair] = []
    seen: set[Pair] = set()
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"pair {i} must be a (teacher, student) tuple, got {pair!r}")
        t, s = pair
        unknown = [m for m in (t, s) if m not in valid]
        if unknown:
            raise ValueError(f"pair {i} {(t, s)!r} names unknown model(s) {unknown}; valid ids: {_format_ids(ids)}")
        if t == s:
            raise ValueError(f"pair {i} {(t, s)!r} has the same model as teacher and student")
        if (t, s) not in seen:
            seen.add((t, s))
            out.append((t, s))
    return out


def select_pairs(
    model_ids: Iterable[str],
    mode: PairMode = "all",
    *,
    k: int | None = None,
    seed: int = 0,
    explicit: Iterable[Sequence[str]] | None = None,
) -> list[Pair]:
    """Choose the (teacher, student) pairs to score.

    ``mode="all"``: every ordered pair; ``"random"``: ``k`` distinct ordered pairs, seeded (the paper
    scores 466 random pairs of 301 models); ``"explicit"``: exactly ``explicit``, validated. Options
    that do not belong to the mode are rejected rather than silently ignored.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair mode {mode!r}; valid modes: {list(PAIR_MODES)}")
    if mode != "random" and k is not None:
        raise ValueError(f"k={k!r} is only used with mode='random' (mode is {mode!r})")
    if mode != "explicit" and explicit is not None:
        raise ValueError(f"explicit pairs are only used with mode='explicit' (mode is {mode!r})")
    if mode == "all":
        return all_pairs(model_ids)
    if mode == "random":
        if k is None:
            raise ValueError("mode='random' needs k, the number of pairs to draw")
        return random_pairs(model_ids, k, seed)
    if explicit is None:
        raise ValueError("mode='explicit' needs explicit=[(teacher, student), ...]")
    return explicit_pairs(model_ids, explicit)


@dataclass(frozen=True)
class PairSelection:
    """A pair choice as configuration (e.g. from a study TOML), resolved against the zoo later."""

    mode: PairMode = "all"
    k: int | None = None
    seed: int = 0
    explicit: tuple[Pair, ...] | None = None

    def resolve(self, model_ids: Iterable[str]) -> list[Pair]:
        return select_pairs(model_ids, self.mode, k=self.k, seed=self.seed, explicit=self.explicit)


# ------------------------------------------------------------------------------------------- alignment
@dataclass(frozen=True, eq=False)
class AlignedPredictions:
    """The predictions of N models on the same n samples, as one correctness matrix.

    ``model_ids`` is sorted; ``correct[m, i]`` says whether model ``model_ids[m]`` got sample
    ``sample_ids[i]`` right; samples are sorted by id.
    """

    model_ids: tuple[str, ...]
    sample_ids: np.ndarray  # (n,) int64, sorted
    labels: np.ndarray  # (n,) int64
    correct: np.ndarray  # (N, n) bool
    num_classes: int
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {m: i for i, m in enumerate(self.model_ids)})

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.shape[0])


def _column_numpy(table: pa.Table, name: str, model_id: str) -> np.ndarray:
    if name not in table.column_names:
        raise ValueError(
            f"predictions of {model_id!r} lack column {name!r}; have {table.column_names}, need {list(_PREDICTION_COLUMNS)}"
        )
    col = table.column(name)
    if not pa.types.is_integer(col.type):
        raise ValueError(f"predictions of {model_id!r}: column {name!r} must be integer, got {col.type}")
    if col.null_count:
        raise ValueError(f"predictions of {model_id!r} have {col.null_count} null values in column {name!r}")
    return np.asarray(col.to_numpy())


def _describe_sample_difference(a_id: str, a: np.ndarray, b_id: str, b: np.ndarray) -> str:
    only_a = np.setdiff1d(a, b)
    only_b = np.setdiff1d(b, a)
    parts = [f"{a_id!r} has {a.size} samples, {b_id!r} has {b.size}"]
    if only_a.size:
        parts.append(f"{only_a.size} sample ids only in {a_id!r} (first: {int(only_a[0])})")
    if only_b.size:
        parts.append(f"{only_b.size} sample ids only in {b_id!r} (first: {int(only_b[0])})")
    return f"predictions of {a_id!r} and {b_id!r} cover different samples: " + "; ".join(parts)


def align_predictions(predictions: Mapping[str, pa.Table], num_classes: int | None = None) -> AlignedPredictions:
    """Align per-model prediction tables (PREDICTION_SCHEMA; sample_id, label, pred used) by sample id.

    Why strict: a pair score is only meaningful when both models were evaluated on the same samples
    with the same labels; a silently dropped or relabelled sample would bias rho for every pair that
    involves the model. So differing sample sets or labels raise, naming both models.

    ``num_classes`` defaults to ``max(label) + 1``; pass the dataset's class count when some classes
    may be absent from the evaluation split.
    """
    if not predictions:
        raise ValueError("no prediction tables given")
    model_ids = _check_model_ids(predictions.keys())
    ref_id = model_ids[0]
    ref_raw: np.ndarray | None = None  # the reference's sample ids in its own row order
    ref_order: np.ndarray | None = None
    ref_ids: np.ndarray | None = None  # sorted
    ref_labels: np.ndarray | None = None
    correct_rows: list[np.ndarray] = []
    for mid in model_ids:
        table = predictions[mid]
        if not isinstance(table, pa.Table):
            raise TypeError(f"predictions of {mid!r} must be a pyarrow.Table, got {type(table).__name__}")
        raw = _column_numpy(table, "sample_id", mid)
        label = _column_numpy(table, "label", mid)
        pred = _column_numpy(table, "pred", mid)
        if ref_raw is not None and raw.size == ref_raw.size and np.array_equal(raw, ref_raw):
            # same rows in the same order as the reference (the usual case: one data loader wrote
            # every table), so the reference's sort order and duplicate check apply as they are
            order, sid = ref_order, ref_ids
        elif raw.size < 2 or bool(np.all(raw[1:] > raw[:-1])):
            order, sid = None, raw  # already sorted and unique
        else:
            order = np.argsort(raw)  # ties are errors below, so stability does not matter
            sid = raw[order]
            dup = sid[1:] == sid[:-1]
            if dup.any():
                raise ValueError(
                    f"predictions of {mid!r} repeat sample ids: {int(dup.sum())} duplicates "
                    f"(first: {int(sid[1:][dup][0])})"
                )
        if order is not None:
            label, pred = label[order], pred[order]
        if ref_ids is None:
            if sid.size == 0:
                raise ValueError(f"predictions of {mid!r} are empty: nothing to score")
            ref_raw, ref_order, ref_ids, ref_labels = raw, order, sid, label
        else:
            assert ref_labels is not None
            if sid is not ref_ids and (sid.size != ref_ids.size or not np.array_equal(sid, ref_ids)):
                raise ValueError(_describe_sample_difference(ref_id, ref_ids, mid, sid))
            diff = label != ref_labels
            if diff.any():
                j = int(np.argmax(diff))
                raise ValueError(
                    f"predictions of {ref_id!r} and {mid!r} disagree on labels for {int(diff.sum())} of "
                    f"{sid.size} samples; first at sample id {int(sid[j])}: label {int(ref_labels[j])} "
                    f"vs {int(label[j])}"
                )
        correct_rows.append(pred == label)
    assert ref_ids is not None and ref_labels is not None
    if ref_labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(ref_labels.min())} in predictions of {ref_id!r}")
    max_label = int(ref_labels.max())
    if num_classes is None:
        num_classes = max_label + 1
    elif num_classes <= max_label:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {max_label}")
    return AlignedPredictions(
        model_ids=tuple(model_ids),
        sample_ids=ref_ids.astype(np.int64, copy=False),
        labels=ref_labels.astype(np.int64, copy=False),
        correct=np.stack(correct_rows),
        num_classes=int(num_classes),
    )


# --------------------------------------------------------------------------------------- per-pair math
def _as_counts(counts: np.ndarray, what: str = "counts") -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows x classes), got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"{what} must be integer flip counts, got dtype {counts.dtype}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"{what} must be non-negative")
    return counts


def _xlogx(vmax: int) -> np.ndarray:
    """v ln v for v = 0..vmax (0 ln 0 = 0)."""
    v = np.arange(vmax + 1, dtype=np.float64)
    out = np.zeros_like(v)
    out[1:] = v[1:] * np.log(v[1:])
    return out


def _entropy(sum_xlogx: np.ndarray, total: np.ndarray) -> np.ndarray:
    """H = ln T - (1/T) sum_k c_k ln c_k, NaN where T = 0; round-off below 0 is clipped."""
    out = np.full(total.shape, np.nan)
    has = total > 0
    tot = total[has].astype(np.float64)
    out[has] = np.maximum(np.log(tot) - sum_xlogx[has] / tot, 0.0)
    return out


def entropy_from_counts(counts: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row's flip distribution q_k = c_k / sum c; NaN for rows without flips.

    Uses H = ln T - (1/T) sum_k c_k ln c_k with T = sum_k c_k: it needs a lookup of c ln c for small
    integers instead of a log per cell. A single class holding all flips gives exactly 0 (tiny
    negative round-off is clipped).
    """
    counts = _as_counts(counts)
    total = counts.sum(axis=1, dtype=np.int64)
    vmax = int(counts.max()) if counts.size else 0
    return _entropy(_xlogx(vmax)[counts].sum(axis=1), total)


def _level_histogram(counts: np.ndarray, vmax: int) -> np.ndarray:
    """hist[r, v] = number of classes of row r with exactly v flips, v = 0..vmax."""
    rows = counts.shape[0]
    nb = vmax + 1
    flat = counts + (np.arange(rows, dtype=np.int64) * nb)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * nb).reshape(rows, nb)


def _top_x_from_hist(hist: np.ndarray, total: np.ndarray, pct: np.ndarray) -> np.ndarray:
    """Top-X% class counts from per-row count histograms (see ``top_x_counts``)."""
    rows, nb = hist.shape
    out = np.zeros((rows, pct.size), dtype=np.int64)
    if nb <= 1:
        return out
    levels = np.arange(nb - 1, 0, -1, dtype=np.int64)  # count levels v = vmax .. 1, descending
    h = hist[:, :0:-1].astype(np.int64)  # h[:, j] = number of classes with exactly levels[j] flips
    flips_incl = np.cumsum(h * levels, axis=1)  # flips in the classes with >= levels[j] flips
    classes_incl = np.cumsum(h, axis=1)
    has = total > 0
    r = np.arange(rows)
    for j, x in enumerate(pct):
        need = x * total  # reached when flips * 100 >= need
        lvl = np.argmax(flips_incl * 100 >= need[:, None], axis=1)  # first level that reaches it
        v = levels[lvl]
        flips_before = flips_incl[r, lvl] - h[r, lvl] * v
        classes_before = classes_incl[r, lvl] - h[r, lvl]
        # classes of this level still needed: the smallest m with (flips_before + m v) * 100 >= need
        extra = -((100 * flips_before - need) // (100 * v))
        out[:, j] = np.where(has, classes_before + extra, 0)
    return out


def _top_x_sorted(counts: np.ndarray, total: np.ndarray, pct: np.ndarray) -> np.ndarray:
    """Top-X% class counts by sorting each row (see ``top_x_counts``)."""
    out = np.zeros((counts.shape[0], pct.size), dtype=np.int64)
    if counts.shape[1] == 0:
        return out
    desc = np.sort(counts, axis=1)[:, ::-1]
    cum = np.cumsum(desc, axis=1, dtype=np.int64) * 100
    has = total > 0
    for j, x in enumerate(pct):
        hit = cum >= (x * total)[:, None]
        out[:, j] = np.where(has, np.argmax(hit, axis=1) + 1, 0)
    return out


def _use_hist(vmax: int, num_classes: int) -> bool:
    # a histogram row has vmax + 1 bins against num_classes cells to sort: worth it when much smaller
    return 4 * (vmax + 1) <= num_classes


def top_x_counts(
    counts: np.ndarray,
    percents: Sequence[int] = TOP_X_PERCENTS,
    method: Literal["auto", "sort", "hist"] = "auto",
) -> np.ndarray:
    """Per row, the number of top classes (by count, descending) that hold >= X% of the row's total.

    Returns int64 (rows, len(percents)); a row with no flips gives 0. The test is on integers,
    ``cumsum * 100 >= X * total``, so a share exactly at the threshold counts (no float round-off).
    Ties need no rule: equal counts are interchangeable in the prefix, so its length is well defined.

    ``method="sort"`` sorts each row. ``"hist"`` histograms the (small integer) counts of each row and
    walks the count levels from the top, O(rows * max_count) instead of O(rows * C log C): with
    ImageNet-val (50 samples per class, 1000 classes) it is several times faster. ``"auto"`` picks
    "hist" when the largest count is well below the number of classes.
    """
    counts = _as_counts(counts)
    pct = np.asarray([int(x) for x in percents], dtype=np.int64)
    if pct.size and (pct.min() <= 0 or pct.max() > 100):
        raise ValueError(f"percents must be in (0, 100], got {list(percents)}")
    if method not in ("auto", "sort", "hist"):
        raise ValueError(f"unknown method {method!r}; valid: 'auto', 'sort', 'hist'")
    total = counts.sum(axis=1, dtype=np.int64)
    vmax = int(counts.max()) if counts.size else 0
    if method == "auto":
        method = "hist" if _use_hist(vmax, counts.shape[1]) else "sort"
    if method == "sort":
        return _top_x_sorted(counts, total, pct)
    return _top_x_from_hist(_level_histogram(counts, vmax), total, pct)


def _flip_stats(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_pos, entropy, top-X counts) of every row of per-class positive flips, sharing one pass."""
    total = pos.sum(axis=1, dtype=np.int64)
    vmax = int(pos.max()) if pos.size else 0
    pct = np.asarray(TOP_X_PERCENTS, dtype=np.int64)
    if _use_hist(vmax, pos.shape[1]):
        hist = _level_histogram(pos, vmax)
        ent = _entropy(hist @ _xlogx(vmax), total)
        return total, ent, _top_x_from_hist(hist, total, pct)
    ent = _entropy(_xlogx(vmax)[pos].sum(axis=1), total)
    return total, ent, _top_x_sorted(pos, total, pct)


# ---------------------------------------------------------------------------------------------- scoring
def _resolve_pairs(
    aligned: AlignedPredictions,
    pairs: Sequence[Sequence[str]] | PairSelection | None,
    random_teachers: Iterable[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-index arrays (teacher, student) of all pairs to score, sorted, plus the noise-floor flag."""
    ids = aligned.model_ids
    index = aligned.index
    if isinstance(random_teachers, str):
        raise TypeError(f"random_teachers must be a collection of model ids, not the string {random_teachers!r}")
    rand = sorted(set(random_teachers))
    unknown = [m for m in rand if m not in index]
    if unknown:
        raise ValueError(f"random teachers {unknown} have no predictions; valid ids: {_format_ids(ids)}")
    rand_set = set(rand)
    real = [m for m in ids if m not in rand_set]
    if pairs is None:
        chosen = all_pairs(real)
    elif isinstance(pairs, PairSelection):
        chosen = pairs.resolve(real)
    else:
        chosen = explicit_pairs(ids, pairs)
    bad = [p for p in chosen if p[1] in rand_set]
    if bad:
        raise ValueError(
            f"randomly initialised models are noise-floor teachers only, never students; got pairs {bad[:5]}"
        )
    keys = {(index[t], index[s]) for t, s in chosen}
    keys.update((index[t], index[s]) for t in rand for s in real)
    is_rand = np.array([m in rand_set for m in ids], dtype=bool)
    if not keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, is_rand
    arr = np.array(sorted(keys), dtype=np.int64)
    return arr[:, 0], arr[:, 1], is_rand


_POPCOUNT_BYTE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_table(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 via a byte lookup table (for numpy < 2, which lacks bitwise_count)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return _POPCOUNT_BYTE[as_bytes].sum(axis=-1, dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 word, as uint8."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _popcount_table(words)  # pragma: no cover - numpy < 2


class _PackedCorrectness:
    """The N x n correctness matrix as bits, packed class by class into 64-bit words.

    Why bits: both[t, s, k], the samples of class k that teacher t and student s both get right, is
    the popcount of ``bits[t] & bits[s]`` over class k's words. A pair then costs about n / 64 word
    operations (one word per class on ImageNet-val, 50 samples per class), against 2n flops for a row
    of a float matrix product; and only the selected pairs are computed, so a few hundred random
    pairs of a big zoo cost no more than they need. Every class starts on a word boundary (padding
    bits are 0), so per-class sums never mix classes; an empty class gets one all-zero word to keep
    the word -> class map simple.
    """

    def __init__(self, aligned: AlignedPredictions):
        labels = aligned.labels
        ncls = aligned.num_classes
        n = labels.size
        order = np.argsort(labels, kind="stable")
        lab_sorted = labels[order]
        sizes = np.bincount(labels, minlength=ncls)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        words = np.maximum(1, -(-sizes // 64))  # words per class
        self.word_start = np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
        self.n_words = int(words.sum())
        self.one_word = self.n_words == ncls  # every class fits in one word: word index = class id
        self.num_classes = ncls
        correct = aligned.correct[:, order]  # (N, n) bool, samples grouped by class
        bit = self.word_start[lab_sorted] * 64 + (np.arange(n) - starts[lab_sorted])
        padded = np.zeros((correct.shape[0], self.n_words * 64), dtype=bool)
        padded[:, bit] = correct
        # little bit order and a uint64 view: the bits of 64 consecutive slots form one word
        self.bits = np.packbits(padded, axis=1, bitorder="little").view(np.uint64)  # (N, n_words)
        # right[m, k]: samples of class k that model m gets right
        self.right = np.stack([np.bincount(lab_sorted[row], minlength=ncls) for row in correct]).astype(np.int64)
        self.total = self.right.sum(axis=1, dtype=np.int64)

    def both_correct(self, t: np.ndarray, s: np.ndarray) -> np.ndarray:
        """both[p, k] = samples of class k that t[p] and s[p] both get right, shape (P, C)."""
        words = self.bits[t]
        np.bitwise_and(words, self.bits[s], out=words)
        counts = _popcount(words)  # (P, n_words) uint8
        if self.one_word:
            return counts
        return np.add.reduceat(counts, self.word_start, axis=1, dtype=np.int64)


def _string_column(ids: pa.Array, model_idx: np.ndarray) -> pa.Array:
    """The model id of every row as a string column (Arrow take of int32 indices into the ids)."""
    return ids.take(pa.array(model_idx.astype(np.int32, copy=False)))


def iter_pair_scores(
    predictions: Mapping[str, pa.Table] | AlignedPredictions,
    pairs: Sequence[Sequence[str]] | PairSelection | None = None,
    random_teachers: Iterable[str] = (),
    *,
    num_classes: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    with_classes: bool = True,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Score pairs chunk by chunk; yields ``(pairs_chunk, pair_classes_chunk)`` Arrow tables.

    Same arguments and rows as ``score_pairs``; use it to stream large results (all pairs of a big
    zoo) to Parquet without holding every row in memory. Chunks follow the global row order.
    """
    if isinstance(predictions, AlignedPredictions):
        aligned = predictions
        if num_classes is not None and num_classes != aligned.num_classes:
            raise ValueError(
                f"num_classes={num_classes} disagrees with the aligned predictions ({aligned.num_classes})"
            )
    else:
        aligned = align_predictions(predictions, num_classes)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    t_all, s_all, is_rand = _resolve_pairs(aligned, pairs, random_teachers)
    if t_all.size == 0:
        return
    ids = pa.array(aligned.model_ids, type=pa.string())
    n = aligned.n_samples
    ncls = aligned.num_classes
    blocks = _PackedCorrectness(aligned)
    right, right_total = blocks.right, blocks.total
    acc = right_total / n
    step = max(1, chunk_elements // max(ncls, blocks.n_words))
    all_classes: dict[int, pa.Array] = {}  # class_id column of a chunk without empty cells, by size
    no_classes = PAIR_CLASS_SCHEMA.empty_table()
    for start in range(0, t_all.size, step):
        t = t_all[start : start + step]
        s = s_all[start : start + step]
        p = t.size
        both = blocks.both_correct(t, s)  # (P, C)
        pos = right[t] - both  # t right minus (t and s right) = t right and s wrong
        n_pos, ent, top = _flip_stats(pos)
        n_neg = right_total[s] - (right_total[t] - n_pos)  # s right minus both right
        cols: dict[str, pa.Array] = {
            "teacher": _string_column(ids, t),
            "student": _string_column(ids, s),
            "teacher_is_random": pa.array(is_rand[t]),
            "n_samples": pa.array(np.full(p, n, dtype=np.int64)),
            "num_classes": pa.array(np.full(p, ncls, dtype=np.int32)),
            "acc_t": pa.array(acc[t]),
            "acc_s": pa.array(acc[s]),
            "delta_acc": pa.array((right_total[t] - right_total[s]) / n),
            "n_pos": pa.array(n_pos),
            "n_neg": pa.array(n_neg),
            "rho_pos": pa.array(n_pos / n),
            "rho_neg": pa.array(n_neg / n),
            "entropy": pa.array(ent, mask=np.isnan(ent), type=pa.float64()),
        }
        for j, x in enumerate(TOP_X_PERCENTS):
            cols[f"top{x}_classes"] = pa.array(top[:, j].astype(np.int32))
        pair_table = pa.Table.from_arrays([cols[f.name] for f in PAIR_SCHEMA], schema=PAIR_SCHEMA)
        if not with_classes:
            yield pair_table, no_classes
            continue

        # pair_classes: only the (pair, class) cells with a flip either way
        neg = right[s] - both
        del both
        empty = (pos | neg) == 0
        if not empty.any():  # the common case for trained zoos: nothing to filter
            rows = np.repeat(np.arange(p), ncls)
            if p not in all_classes:
                all_classes[p] = pa.array(np.tile(np.arange(ncls, dtype=np.int32), p))
            class_id = all_classes[p]  # Arrow arrays are immutable: safe to share between chunks
            pos_flips, neg_flips = pos.ravel(), neg.ravel()
        else:
            keep = np.flatnonzero(~empty.ravel())
            rows = keep // ncls
            class_id = pa.array((keep - rows * ncls).astype(np.int32))
            pos_flips, neg_flips = pos.ravel()[keep], neg.ravel()[keep]
        del empty
        class_table = pa.Table.from_arrays(
            [_string_column(ids, t[rows]), _string_column(ids, s[rows]), class_id, pa.array(pos_flips), pa.array(neg_flips)],
            schema=PAIR_CLASS_SCHEMA,
        )
        yield pair_table, class_table


def score_pairs(
    predictions: Mapping[str, pa.Table] | AlignedPredictions,
    pairs: Sequence[Sequence[str]] | PairSelection | None = None,
    random_teachers: Iterable[str] = (),
    *,
    num_classes: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    with_classes: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """Score (teacher, student) pairs from cached predictions.

    Args:
        predictions: model id -> prediction table (PREDICTION_SCHEMA; ``sample_id``, ``label`` and
            ``pred`` are used), or an ``AlignedPredictions`` already built by ``align_predictions``.
        pairs: the pairs to score: ``None`` = every ordered pair of non-random models, a
            ``PairSelection`` (resolved against the non-random models), or explicit (teacher, student)
            tuples (validated; duplicates dropped).
        random_teachers: ids of randomly initialised models; each is also scored as a teacher against
            every non-random student (``teacher_is_random`` true), and may not be a student.
        num_classes: the dataset's class count (default: max label + 1).
        chunk_elements: (pair, class) cells per chunk; bounds memory, not results.
        with_classes: build ``pair_classes``; False returns it empty, which saves most of the time and
            memory when only pair-level numbers are needed for a large zoo.

    Returns:
        ``(pairs, pair_classes)`` conforming to PAIR_SCHEMA and PAIR_CLASS_SCHEMA. Pair rows are sorted
        by teacher id then student id; ``pair_classes`` has one row per pair and class with at least
        one positive or negative flip (absent rows mean zero flips both ways), sorted by pair then
        class.
    """
    chunks = list(
        iter_pair_scores(
            predictions,
            pairs,
            random_teachers,
            num_classes=num_classes,
            chunk_elements=chunk_elements,
            with_classes=with_classes,
        )
    )
    if not chunks:
        return PAIR_SCHEMA.empty_table(), PAIR_CLASS_SCHEMA.empty_table()
    pair_tables, class_tables = zip(*chunks)
    return pa.concat_tables(pair_tables), pa.concat_tables(class_tables)


__all__ = [
    "AlignedPredictions",
    "DEFAULT_CHUNK_ELEMENTS",
    "Pair",
    "PairSelection",
    "align_predictions",
    "all_pairs",
    "entropy_from_counts",
    "explicit_pairs",
    "iter_pair_scores",
    "random_pairs",
    "score_pairs",
    "select_pairs",
    "top_x_counts",
]
