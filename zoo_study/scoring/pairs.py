"""Which (teacher, student) pairs to score: every ordered pair, a seeded random draw, or a given list.

Why a module of its own: choosing pairs is configuration, not arithmetic. The study config's ``[score]``
section is exactly :class:`PairSelection` (one shape per concept), which is validated when the config is
loaded (before anything runs) and resolved against the zoo's model ids only when the score stage starts.
Resolution depends only on the set of model ids and the seed, never on the order a catalog listed them
in, so a study's pairs are reproducible from its config.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Pair = tuple[str, str]
PairMode = Literal["all", "random", "explicit"]
PAIR_MODES: tuple[str, ...] = ("all", "random", "explicit")


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



class PairSelection(BaseModel):
    """A pair choice as configuration (the study TOML's ``[score]`` section), resolved against the zoo later.

    ``pairs``: ``"all"`` (every ordered pair), ``"random"`` (``k`` distinct ordered pairs drawn with
    ``seed``) or ``"explicit"`` (exactly ``explicit``, a list of ``[teacher, student]``). Options that do
    not belong to the chosen mode are rejected, as :func:`select_pairs` does, rather than silently
    ignored. Model ids in ``explicit`` are checked by :meth:`resolve`, which knows the zoo.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pairs: PairMode = "all"
    k: int | None = Field(None, ge=1)  # 'random': number of pairs to draw
    seed: int = Field(0, ge=0)  # 'random': seed of the draw
    explicit: list[tuple[str, str]] = []  # 'explicit': (teacher, student) pairs; TOML [["a", "b"], ...]

    @model_validator(mode="after")
    def _options_fit_the_mode(self) -> "PairSelection":
        if self.pairs == "random" and self.k is None:
            raise ValueError(
                "score.pairs='random' needs score.k (number of pairs), an integer >= 1; "
                "or use score.pairs='all' or 'explicit'"
            )
        if self.pairs == "explicit" and not self.explicit:
            raise ValueError(
                "score.pairs='explicit' needs score.explicit = [[teacher, student], ...] with at least one pair; "
                "or use score.pairs='all' or 'random'"
            )
        if self.pairs != "random" and self.k is not None:
            raise ValueError(
                f"score.k={self.k!r} is only used with score.pairs='random' (score.pairs is {self.pairs!r}); "
                "drop score.k or set score.pairs='random'"
            )
        if self.pairs != "explicit" and self.explicit:
            raise ValueError(
                f"score.explicit ({len(self.explicit)} pairs) is only used with score.pairs='explicit' "
                f"(score.pairs is {self.pairs!r}); drop score.explicit or set score.pairs='explicit'"
            )
        return self

    def resolve(self, model_ids: Iterable[str]) -> list[Pair]:
        """The pairs this selection picks among ``model_ids`` (see :func:`select_pairs`)."""
        explicit = self.explicit if self.pairs == "explicit" else None
        return select_pairs(model_ids, self.pairs, k=self.k, seed=self.seed, explicit=explicit)


__all__ = [
    "PAIR_MODES",
    "Pair",
    "PairMode",
    "PairSelection",
    "all_pairs",
    "explicit_pairs",
    "random_pairs",
    "select_pairs",
]
