"""Are a teacher's areas of expertise semantically related classes? (Fig 2b; METHOD.md section 1.)

For each scored pair and X in ``TOP_X_PERCENTS``: the top-X% classes (the smallest prefix of classes,
sorted by positive flips descending and class id ascending, whose cumulative share of the pair's
positive flips is >= X%; its size is the pair table's ``top{X}_classes``), and

- ``sim_top``: the mean pairwise cosine similarity of those classes' text embeddings (NULL below two
  classes: no pair);
- ``sim_all``: the same mean over all class pairs of the dataset (the paper's reference level);
- ``sim_random_*``: the mean and 2.5 / 97.5 percentiles of ``sim_top`` for ``random_sets`` random class
  sets of the same size, drawn with a seed derived from (seed, teacher, student, X), so every run gives
  the same baseline;
- ``same_super_share``: the share of the top classes' pairs that lie in one super-class, and
  ``same_super_chance``: its exact expectation for a uniformly random set of that size (the share of all
  class pairs in one super-class: sum_s n_s (n_s - 1) / (C (C - 1)); random subsets of any size >= 2 have
  the same pair-level expectation). Both NULL when the dataset has no super-classes.

Text encoders (:func:`text_encoder`): ``"lexical"`` (default) embeds each class text as TF-IDF weights of
its words and character 3-5-grams (scikit-learn, fitted on the dataset's class texts; L2-normalised).
Why it is the default: it installs from the package registry and runs offline with nothing to
download, and no installable package ships semantic text-encoder weights. It measures shared words and
word pieces ("striped red circle" vs "striped blue circle"; "Boston terrier" vs "Irish terrier"), not
meaning: synonyms with no shared letters look unrelated. ``"clip:<local dir>"`` uses a CLIP text encoder
(the paper's choice) from a local Hugging Face model folder through ``transformers`` (offline,
``local_files_only``), when both are available. The super-class measure needs no encoder: it is exact on
datasets whose super-classes are known (the generated data: the shape).
"""

from __future__ import annotations

import hashlib
from typing import Protocol, Sequence

import numpy as np

__all__ = ["TextEncoder", "LexicalEncoder", "ClipTextEncoder", "text_encoder", "top_x_classes", "mean_pairwise",
           "same_super_share", "same_super_chance", "random_set_similarity", "pair_seed"]


class TextEncoder(Protocol):
    """Class texts -> L2-normalised embeddings [n, d]; ``name`` goes into the stored rows."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class LexicalEncoder:
    """TF-IDF of words and character 3-5-grams over the dataset's own class texts (see the module docstring)."""

    name = "lexical"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        texts = [t.replace("_", " ").lower() for t in texts]
        words = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", sublinear_tf=True).fit_transform(texts)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(texts)
        return np.asarray(normalize(hstack([words, chars]).tocsr()).todense(), dtype=np.float32)


class ClipTextEncoder:
    """A CLIP text tower from a local model folder (``transformers``; offline). Prompts "a photo of a {name}."."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"clip:{path}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        try:
            import torch
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError as exc:
            raise ValueError(f"text encoder {self.name!r} needs the transformers package ({exc}); "
                             "or use semantics.encoder = \"lexical\"") from None
        try:
            tok = CLIPTokenizer.from_pretrained(self.path, local_files_only=True)
            model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
        except OSError as exc:
            raise ValueError(f"text encoder {self.name!r}: no CLIP model in {self.path!r} ({exc})") from None
        prompts = [f"a photo of a {t.replace('_', ' ')}." for t in texts]
        with torch.no_grad():
            e = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
        e = torch.nn.functional.normalize(e.float(), dim=-1)
        return e.numpy().astype(np.float32)


def text_encoder(spec: str) -> TextEncoder:
    """``"lexical"`` or ``"clip:<local folder>"``; anything else is a ValueError naming the valid forms."""
    if spec == "lexical":
        return LexicalEncoder()
    if spec.startswith("clip:") and len(spec) > 5:
        return ClipTextEncoder(spec[5:])
    raise ValueError(f"unknown text encoder {spec!r}; valid: \"lexical\", \"clip:<local model folder>\"")


def top_x_classes(pos_flips: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` classes with most positive flips (ties: lower class id first)."""
    order = np.lexsort((np.arange(len(pos_flips)), -np.asarray(pos_flips)))
    return order[:size]


def mean_pairwise(sim: np.ndarray, classes: np.ndarray) -> float | None:
    """Mean of ``sim[i, j]`` over the unordered pairs i < j of ``classes``; None below two classes."""
    k = len(classes)
    if k < 2:
        return None
    sub = sim[np.ix_(classes, classes)]
    return float((sub.sum() - np.trace(sub)) / (k * (k - 1)))


def same_super_share(classes: np.ndarray, superclass_of: np.ndarray) -> float | None:
    """Share of the unordered pairs of ``classes`` that lie in one super-class; None below two classes."""
    k = len(classes)
    if k < 2:
        return None
    s = superclass_of[classes]
    _, counts = np.unique(s, return_counts=True)
    return float((counts * (counts - 1)).sum() / (k * (k - 1)))


def same_super_chance(superclass_of: np.ndarray) -> float:
    """The expected :func:`same_super_share` of a uniformly random class set (any size >= 2)."""
    c = len(superclass_of)
    _, counts = np.unique(superclass_of, return_counts=True)
    return float((counts * (counts - 1)).sum() / (c * (c - 1)))


def pair_seed(seed: int, teacher: str, student: str, x: int) -> int:
    """A stable seed per (study seed, pair, X): the baseline does not move when other pairs change."""
    h = hashlib.sha256(f"{seed}|{teacher}|{student}|{x}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def random_set_similarity(sim: np.ndarray, size: int, n_sets: int, seed: int) -> tuple[float, float, float] | None:
    """(mean, 2.5th, 97.5th percentile) of :func:`mean_pairwise` over ``n_sets`` random class sets of
    ``size`` classes (without replacement within a set); None below two classes."""
    c = sim.shape[0]
    if size < 2 or n_sets < 1:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([mean_pairwise(sim, rng.choice(c, size=size, replace=False)) for _ in range(n_sets)])
    return float(vals.mean()), float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def semantic_tables(pairs, pair_classes, class_names: Sequence[str], superclass_of: Sequence[int] | None,
                    superclass_names: Sequence[str] | None, encoder: TextEncoder, *, random_sets: int = 200,
                    seed: int = 0, progress: bool = False):
    """(class embeddings, pair semantics) as Arrow tables (CLASS_EMBEDDING_SCHEMA, PAIR_SEMANTICS_SCHEMA)
    from the score stage's ``pairs`` and ``pair_classes`` tables and the dataset's classes."""
    from zoo_study.schemas import CLASS_EMBEDDING_SCHEMA, PAIR_SEMANTICS_SCHEMA, TOP_X_PERCENTS
    from zoo_study.store import table_from_rows

    c = len(class_names)
    emb = np.asarray(encoder.encode(list(class_names)), dtype=np.float64)
    if emb.shape[0] != c:
        raise ValueError(f"text encoder {encoder.name!r} returned {emb.shape[0]} embeddings for {c} classes")
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    sim = emb @ emb.T
    sim_all = mean_pairwise(sim, np.arange(c)) if c >= 2 else 0.0
    sup = np.asarray(superclass_of, dtype=np.int64) if superclass_of is not None else None
    chance = same_super_chance(sup) if sup is not None and c >= 2 else None
    emb_rows = [{"class_id": k, "class_name": str(class_names[k]),
                 "superclass_id": int(sup[k]) if sup is not None else None,
                 "superclass_name": (str(superclass_names[sup[k]]) if sup is not None and superclass_names else None),
                 "encoder": encoder.name, "embedding": emb[k].astype(np.float32).tolist()} for k in range(c)]

    flips: dict[tuple[str, str], np.ndarray] = {}
    t_col, s_col = pair_classes.column("teacher").to_pylist(), pair_classes.column("student").to_pylist()
    k_col, f_col = pair_classes.column("class_id").to_numpy(), pair_classes.column("pos_flips").to_numpy()
    for t, s_, k, f in zip(t_col, s_col, k_col, f_col):
        flips.setdefault((t, s_), np.zeros(c, dtype=np.int64))[int(k)] = int(f)
    rows = []
    pair_rows = pairs.to_pylist()
    it = pair_rows
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(pair_rows, desc="semantics", unit="pair")
    for p in it:
        counts = flips.get((p["teacher"], p["student"]), np.zeros(c, dtype=np.int64))
        for x in TOP_X_PERCENTS:
            size = int(p[f"top{x}_classes"])
            top = top_x_classes(counts, size)
            rnd = random_set_similarity(sim, size, random_sets, pair_seed(seed, p["teacher"], p["student"], x))
            rows.append({
                "teacher": p["teacher"], "student": p["student"], "teacher_is_random": bool(p["teacher_is_random"]),
                "x_pct": int(x), "n_classes": size, "sim_top": mean_pairwise(sim, top), "sim_all": float(sim_all),
                "sim_random_mean": rnd[0] if rnd else None, "sim_random_low": rnd[1] if rnd else None,
                "sim_random_high": rnd[2] if rnd else None, "n_random": int(random_sets),
                "same_super_share": same_super_share(top, sup) if sup is not None else None,
                "same_super_chance": chance, "encoder": encoder.name,
            })
    return table_from_rows(emb_rows, CLASS_EMBEDDING_SCHEMA), table_from_rows(rows, PAIR_SEMANTICS_SCHEMA)
