"""Score (teacher, student) pairs from cached predictions into the ``pairs`` / ``pair_classes`` tables.

Why the computation looks the way it does:

- Pairs are never scored by re-running models: every model's predictions are cached once
  (``predictions/model=<id>.parquet``) and all pairs are derived from the N x n boolean correctness
  matrix (:mod:`zoo_study.scoring.alignment`) with packed bit counts (:mod:`zoo_study.scoring.counts`),
  so scoring all N^2 pairs costs far less than the N prediction passes.
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

from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from zoo_study.scoring.alignment import AlignedPredictions, align_predictions
from zoo_study.scoring.counts import _flip_stats, _PackedCorrectness, entropy_from_counts
from zoo_study.scoring.pairs import PairSelection, _format_ids, all_pairs, explicit_pairs
from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA, TOP_X_PERCENTS

#: default number of (pair, class) cells scored per chunk: ~1M cells keeps a chunk's work buffers (a few
#: int64 arrays of that size) at tens of MB; larger chunks measured slower (more page faults, less cache).
DEFAULT_CHUNK_ELEMENTS = 1 << 20


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


def _correctness_kappa(right_t: np.ndarray, right_s: np.ndarray, both: np.ndarray, n: int) -> np.ndarray:
    """Cohen's kappa of two correctness vectors from their counts: (p_o - p_e) / (1 - p_e), where p_o is
    the share of samples both get right or both get wrong and p_e the same share expected from the two
    accuracies alone. NaN where p_e = 1 (no disagreement is possible)."""
    rt, rs, both = (np.asarray(a, dtype=np.float64) for a in (right_t, right_s, both))
    p_o = (both + (n - rt - rs + both)) / n
    p_e = (rt * rs + (n - rt) * (n - rs)) / float(n) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1.0, (p_o - p_e) / (1.0 - p_e), np.nan)


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
    chunks = _Chunks(aligned, is_rand)
    step = max(1, chunk_elements // max(aligned.num_classes, chunks.blocks.n_words))
    no_classes = PAIR_CLASS_SCHEMA.empty_table()
    for start in range(0, t_all.size, step):
        t = t_all[start : start + step]
        s = s_all[start : start + step]
        both = chunks.blocks.both_correct(t, s)  # (P, C)
        pos = chunks.right[t] - both  # t right minus (t and s right) = t right and s wrong
        pair_table = chunks.pair_table(t, s, pos)
        if not with_classes:
            yield pair_table, no_classes
            continue
        neg = chunks.right[s] - both
        del both
        yield pair_table, chunks.class_table(t, s, pos, neg)


class _Chunks:
    """What every chunk of pairs reads: the packed correctness, per-model totals and accuracies, the null
    entropies, and the ``class_id`` columns already built (by chunk size)."""

    def __init__(self, aligned: AlignedPredictions, is_rand: np.ndarray):
        self.ids = pa.array(aligned.model_ids, type=pa.string())
        self.n, self.ncls, self.is_rand = aligned.n_samples, aligned.num_classes, is_rand
        self.blocks = _PackedCorrectness(aligned)
        self.right, self.right_total = self.blocks.right, self.blocks.total
        self.acc = self.right_total / self.n
        # the null model of claim 2: a student's positive flips drawn at random from its own errors have,
        # in expectation of a bias-corrected estimator, the entropy of its per-class error profile
        errors = np.bincount(aligned.labels, minlength=self.ncls)[None, :] - self.right
        self.null_entropy = entropy_from_counts(errors)
        self.all_classes: dict[int, pa.Array] = {}  # class_id column of a chunk without empty cells, by size

    def pair_table(self, t: np.ndarray, s: np.ndarray, pos: np.ndarray) -> pa.Table:
        """The ``pairs`` rows of teachers ``t`` and students ``s`` (``pos``: the positive flips per class)."""
        n, p, right_total = self.n, t.size, self.right_total
        n_pos, ent, ent_g, top = _flip_stats(pos)
        n_neg = right_total[s] - (right_total[t] - n_pos)  # s right minus both right
        kappa = _correctness_kappa(right_total[t], right_total[s], right_total[t] - n_pos, n)
        null = self.null_entropy[s]
        cols: dict[str, pa.Array] = {
            "teacher": _string_column(self.ids, t),
            "student": _string_column(self.ids, s),
            "teacher_is_random": pa.array(self.is_rand[t]),
            "n_samples": pa.array(np.full(p, n, dtype=np.int64)),
            "num_classes": pa.array(np.full(p, self.ncls, dtype=np.int32)),
            "acc_t": pa.array(self.acc[t]),
            "acc_s": pa.array(self.acc[s]),
            "delta_acc": pa.array((right_total[t] - right_total[s]) / n),
            "n_pos": pa.array(n_pos),
            "n_neg": pa.array(n_neg),
            "rho_pos": pa.array(n_pos / n),
            "rho_neg": pa.array(n_neg / n),
            "entropy": pa.array(ent, mask=np.isnan(ent), type=pa.float64()),
            "entropy_corrected": pa.array(ent_g, mask=np.isnan(ent_g), type=pa.float64()),
            "entropy_null": pa.array(null, mask=np.isnan(null), type=pa.float64()),
            "kappa": pa.array(kappa, mask=np.isnan(kappa), type=pa.float64()),
        }
        for j, x in enumerate(TOP_X_PERCENTS):
            cols[f"top{x}_classes"] = pa.array(top[:, j].astype(np.int32))
        return pa.Table.from_arrays([cols[f.name] for f in PAIR_SCHEMA], schema=PAIR_SCHEMA)

    def class_table(self, t: np.ndarray, s: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> pa.Table:
        """The ``pair_classes`` rows: only the (pair, class) cells with a flip either way."""
        p, ncls = t.size, self.ncls
        empty = (pos | neg) == 0
        if not empty.any():  # the common case for trained zoos: nothing to filter
            rows = np.repeat(np.arange(p), ncls)
            if p not in self.all_classes:
                self.all_classes[p] = pa.array(np.tile(np.arange(ncls, dtype=np.int32), p))
            class_id = self.all_classes[p]  # Arrow arrays are immutable: safe to share between chunks
            pos_flips, neg_flips = pos.ravel(), neg.ravel()
        else:
            keep = np.flatnonzero(~empty.ravel())
            rows = keep // ncls
            class_id = pa.array((keep - rows * ncls).astype(np.int32))
            pos_flips, neg_flips = pos.ravel()[keep], neg.ravel()[keep]
        del empty
        return pa.Table.from_arrays(
            [_string_column(self.ids, t[rows]), _string_column(self.ids, s[rows]), class_id, pa.array(pos_flips),
             pa.array(neg_flips)],
            schema=PAIR_CLASS_SCHEMA,
        )


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


__all__ = ["DEFAULT_CHUNK_ELEMENTS", "iter_pair_scores", "score_pairs"]
