"""Complementary knowledge between pretrained classifiers, scored from cached predictions.

What is computed (METHOD.md section 1), for a teacher t and a student s on the n samples of the
evaluation split:

- positive flip of sample i: t right and s wrong; ``rho_pos = n_pos / n`` ("complementary knowledge"
  of t w.r.t. s). Negative flip: t wrong and s right; ``rho_neg = n_neg / n``. rho_pos(t,s) = rho_neg(s,t).
- ``delta_acc = acc_t - acc_s`` (equal to rho_pos - rho_neg).
- per-class positive flips c_k, their shares q_k = c_k / sum c and the entropy H = -sum q_k ln q_k
  (nats; null when there is no positive flip).
- top-X% classes: the size of the smallest prefix of classes, sorted by c_k descending, whose
  cumulative share of positive flips is >= X%, for X in ``TOP_X_PERCENTS``.

Why a package of four modules: the topic has four layers that change for different reasons.

- :mod:`~zoo_study.scoring.pairs`: which (teacher, student) pairs to score; :class:`PairSelection` is
  also the study config's ``[score]`` section.
- :mod:`~zoo_study.scoring.alignment`: per-model prediction tables -> one N x n correctness matrix,
  strictly aligned by sample id.
- :mod:`~zoo_study.scoring.counts`: the integer arithmetic (entropy, top-X% counts, packed bit counts).
- :mod:`~zoo_study.scoring.scoring`: chunked scoring of the selected pairs into Arrow tables conforming
  to ``PAIR_SCHEMA`` and ``PAIR_CLASS_SCHEMA``.
"""

from zoo_study.scoring.alignment import AlignedPredictions, align_predictions
from zoo_study.scoring.counts import entropy_from_counts, top_x_counts
from zoo_study.scoring.pairs import Pair, PairSelection, all_pairs, explicit_pairs, random_pairs, select_pairs
from zoo_study.scoring.scoring import DEFAULT_CHUNK_ELEMENTS, iter_pair_scores, score_pairs

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
