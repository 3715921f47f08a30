"""Tests of the generated dataset, stratified subsets and the split/loader plumbing (zoo_study.data).

Why these matter: every study run starts from these splits. The generated data must be byte-for-byte
reproducible (job ids and cached predictions assume it), balanced, and named so that reports read
well; the transfer subset must be exactly the paper's stratified X% and must not move when numpy or
the algorithm changes silently (pinned indices below). Small specs only: a few hundred 16px images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo_study.data import (
    DataSpec,
    GeneratedSpec,
    ImageSplit,
    load_source,
    make_generated,
    raw_loader,
    stratified_indices,
)
from zoo_study.data import generated as gen
from zoo_study.data.generated import COLOURS, PATTERNS, SHAPES, class_table, render_split

SMALL = GeneratedSpec(seed=3, num_superclasses=4, classes_per_superclass=5, image_size=16, n_train=230, n_eval=90)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small():
    return make_generated(SMALL)


# ------------------------------------------------------------------------------------ generated data
def test_same_spec_gives_identical_bytes_across_builds(small):
    again = make_generated(GeneratedSpec(**SMALL.__dict__))  # an equal spec, not the same object
    for name in ("train", "eval"):
        a, b = small.split(name), again.split(name)
        assert _digest(a.images) == _digest(b.images)
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.sample_ids, b.sample_ids)


def test_chunked_rendering_is_deterministic_across_chunk_boundaries(monkeypatch):
    """Each chunk draws from its own (seed, split, chunk) generator; rendering twice with small chunks
    must repeat every chunk exactly."""
    monkeypatch.setattr(gen, "_CHUNK", 32)
    spec = GeneratedSpec(seed=1, num_superclasses=2, classes_per_superclass=3, image_size=12, n_train=100, n_eval=10)
    a, la = render_split(spec, "train")
    b, lb = render_split(spec, "train")
    assert _digest(a) == _digest(b) and np.array_equal(la, lb)
    # the four chunks differ from each other (no generator is reused)
    chunks = {_digest(a[i : i + 8]) for i in range(0, 100, 32)}
    assert len(chunks) == 4


def test_different_seed_or_split_gives_different_images(small):
    other = make_generated(GeneratedSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert _digest(small.train.images) != _digest(other.train.images)
    assert not np.array_equal(small.train.labels, other.train.labels)
    # train and eval of one spec are different draws too
    assert _digest(small.train.images[:90]) != _digest(small.eval.images)


def test_labels_of_a_tiny_spec_are_pinned():
    """The label order comes from PCG64 alone (integers, no float math), so it is pinned exactly: a
    change in numpy's generator or in the labelling algorithm shows up here."""
    spec = GeneratedSpec(seed=0, num_superclasses=1, classes_per_superclass=3, image_size=8, n_train=9, n_eval=4)
    _, train = render_split(spec, "train")
    _, ev = render_split(spec, "eval")
    expected_train = np.random.default_rng([0, 1, 0]).permutation(np.arange(9) % 3)
    assert train.tolist() == expected_train.tolist()
    assert train.tolist() == [1, 0, 0, 1, 2, 0, 1, 2, 2]
    assert ev.tolist() == [2, 1, 0, 0]


def test_shapes_dtypes_and_sample_ids(small):
    s = SMALL.image_size
    assert small.num_classes == SMALL.num_classes == 20
    for split, n in ((small.train, SMALL.n_train), (small.eval, SMALL.n_eval)):
        assert split.images.shape == (n, 3, s, s) and split.images.dtype == np.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == np.int64
        assert split.sample_ids.tolist() == list(range(n))
        assert split.raw_size == s and len(split) == n
        img, label, sid = split[5]
        assert isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and tuple(img.shape) == (3, s, s)
        assert label == int(split.labels[5]) and sid == 5
        assert img.numpy().tobytes() == split.images[5].tobytes()
    # real pictures, not blank canvases: every image has contrast
    assert (small.train.images.reshape(SMALL.n_train, -1).std(axis=1) > 5).all()


@pytest.mark.parametrize("n", [1, 19, 20, 21, 230, 1000])
def test_exact_class_balance(n):
    labels = gen._balanced_labels(n, 20, np.random.default_rng(0))
    counts = np.bincount(labels, minlength=20)
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1


def test_class_balance_of_built_splits(small):
    for split in (small.train, small.eval):
        counts = np.bincount(split.labels, minlength=small.num_classes)
        assert counts.max() - counts.min() <= 1 and counts.sum() == len(split)


def test_class_names_are_unique_readable_triples(small):
    names = small.class_names
    assert len(names) == len(set(names)) == 20
    assert small.train.class_names == names and small.eval.class_names == names
    for c, name in enumerate(names):
        pattern, colour, shape = name.split(" ")
        assert pattern in PATTERNS and colour in [col[0] for col in COLOURS] and shape in SHAPES
        assert shape == SHAPES[small.superclass_of[c]]
    assert names[0] == "solid red circle"
    assert names[6] == "dotted orange square"  # superclass 1, colour 1, pattern (1 + 1) % 6


def test_full_default_class_table_is_unique():
    names = [row[0] for row in class_table(GeneratedSpec())]
    assert len(names) == len(set(names)) == 100


def test_superclass_grouping(small):
    assert small.superclass_names == list(SHAPES[:4])
    assert small.superclass_of == [c // 5 for c in range(20)]
    # classes of one super-class share the shape and differ in colour
    for s in range(4):
        members = [c for c in range(20) if small.superclass_of[c] == s]
        assert len(members) == 5
        assert len({small.class_names[c].split(" ")[1] for c in members}) == 5


def test_spec_in_meta(small):
    assert small.meta["spec"]["seed"] == 3 and small.name == "generated"


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_superclasses", 0),
        ("num_superclasses", 11),
        ("classes_per_superclass", 0),
        ("classes_per_superclass", 12),
        ("image_size", 4),
        ("n_train", 0),
        ("n_eval", -3),
        ("difficulty", -0.5),
        ("difficulty", float("nan")),
        ("seed", -1),
        ("seed", 1.5),
        ("n_train", "100"),
    ],
)
def test_bad_spec_value_raises_naming_it(field, value):
    with pytest.raises(ValueError) as err:
        GeneratedSpec(**{field: value})
    msg = str(err.value)
    assert field.split("_")[0] in msg and repr(value).strip("'") in msg


def test_render_split_rejects_unknown_split():
    with pytest.raises(ValueError, match="'test'"):
        render_split(SMALL, "test")


def test_difficulty_zero_is_clean_and_deterministic():
    spec = GeneratedSpec(num_superclasses=2, classes_per_superclass=2, image_size=16, n_train=8, n_eval=4, difficulty=0)
    a, _ = render_split(spec, "train")
    b, _ = render_split(spec, "train")
    assert _digest(a) == _digest(b)


# ------------------------------------------------------------------------------ stratified subsets
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0])  # class sizes 5, 4, 3


def test_fraction_gives_exact_rounded_per_class_counts():
    idx = stratified_indices(LABELS, fraction=0.5, seed=0)
    counts = np.bincount(LABELS[idx], minlength=3)
    # round(5 * .5) = 3 (2.5 rounds half up), 4 * .5 = 2, round(1.5) = 2
    assert counts.tolist() == [3, 2, 2]
    assert idx.tolist() == sorted(idx.tolist()) and len(set(idx.tolist())) == len(idx)


def test_fraction_keeps_at_least_one_sample_per_class():
    idx = stratified_indices(LABELS, fraction=0.01, seed=0)
    assert np.bincount(LABELS[idx]).tolist() == [1, 1, 1]


def test_fraction_one_is_everything():
    assert stratified_indices(LABELS, fraction=1.0).tolist() == list(range(len(LABELS)))


def test_per_class_gives_exact_counts():
    idx = stratified_indices(LABELS, per_class=2, seed=5)
    assert np.bincount(LABELS[idx]).tolist() == [2, 2, 2]


def test_ten_percent_of_a_balanced_split():
    labels = np.repeat(np.arange(10), 50)
    idx = stratified_indices(labels, fraction=0.1, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5] * 10


def test_pinned_indices_for_a_hand_example():
    """Exact expected subsets: a change in numpy's PCG64/permutation or in the algorithm fails here."""
    assert stratified_indices(LABELS, fraction=0.5, seed=0).tolist() == [1, 5, 6, 8, 9, 10, 11]
    assert stratified_indices(LABELS, per_class=1, seed=1).tolist() == [2, 7, 11]
    assert stratified_indices(LABELS, per_class=2, seed=7).tolist() == [0, 1, 5, 6, 7, 8]
    # the algorithm in words: class c keeps the first k of default_rng([seed, c]).permutation(its members)
    expected = []
    for c, k in ((0, 3), (1, 2), (2, 2)):
        members = np.flatnonzero(LABELS == c)
        expected += members[np.random.default_rng([0, c]).permutation(len(members))[:k]].tolist()
    assert sorted(expected) == [1, 5, 6, 8, 9, 10, 11]


def test_same_seed_same_indices_and_seeds_differ():
    labels = np.repeat(np.arange(5), 40)
    a = stratified_indices(labels, fraction=0.25, seed=11)
    b = stratified_indices(labels.copy(), fraction=0.25, seed=11)
    c = stratified_indices(labels, fraction=0.25, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[c]).tolist() == [10] * 5


def test_subset_of_one_class_does_not_depend_on_other_classes():
    labels = np.repeat(np.arange(3), 10)
    a = stratified_indices(labels, per_class=4, seed=2)
    b = stratified_indices(labels[:20], per_class=4, seed=2)  # class 2 removed
    assert a[labels[a] < 2].tolist() == b.tolist()


def test_empty_labels_give_empty_int_indices():
    idx = stratified_indices(np.zeros(0, dtype=np.int64), fraction=0.5)
    assert idx.shape == (0,) and idx.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fraction=0.0), "fraction must be in \\(0, 1\\], got 0.0"),
        (dict(fraction=1.5), "got 1.5"),
        (dict(fraction=-0.1), "got -0.1"),
        (dict(per_class=0), "per_class must be an integer >= 1, got 0"),
        (dict(per_class=2.5), "got 2.5"),
        (dict(per_class=4), "per_class=4 but class 2 has only 3"),
        (dict(), "exactly one"),
        (dict(fraction=0.5, per_class=1), "exactly one"),
        (dict(fraction=0.5, seed=-2), "seed must be an integer >= 0, got -2"),
    ],
)
def test_bad_subset_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stratified_indices(LABELS, **kwargs)


# ----------------------------------------------------------------------------- splits and loaders
def test_subset_keeps_original_sample_ids(small):
    idx = np.array([4, 10, 99])
    sub = small.train.subset(idx, name="pick")
    assert sub.sample_ids.tolist() == [4, 10, 99] and sub.name == "pick"
    assert np.array_equal(sub.images, small.train.images[idx]) and np.array_equal(sub.labels, small.train.labels[idx])
    _, _, sid = sub[2]
    assert sid == 99


def test_raw_loader_batches_and_seeded_shuffle(small):
    batches = list(raw_loader(small.eval, 32))
    assert [b[0].shape[0] for b in batches] == [32, 32, 26]
    raw, labels, sids = batches[0]
    assert raw.dtype == torch.uint8 and labels.dtype == torch.int64 and sids.tolist() == list(range(32))
    order = lambda seed: torch.cat([b[2] for b in raw_loader(small.eval, 32, shuffle=True, seed=seed)]).tolist()
    assert order(4) == order(4) and order(4) != order(5) and sorted(order(4)) == list(range(90))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        raw_loader(small.eval, 0)


def test_image_split_validation():
    ok = dict(labels=np.zeros(2), sample_ids=np.arange(2), class_names=["a"], raw_size=8)
    with pytest.raises(ValueError, match="exactly one"):
        ImageSplit(**ok)
    with pytest.raises(ValueError, match="same length"):
        ImageSplit(**{**ok, "sample_ids": np.arange(3)}, images=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="loader"):
        ImageSplit(**ok, files=["a.jpg", "b.jpg"])


def test_data_source_split_names(small):
    assert small.split("train") is small.train and small.split("eval") is small.eval
    with pytest.raises(ValueError, match="'val'"):
        small.split("val")


def test_load_source_caches_per_spec():
    spec = DataSpec(generated=GeneratedSpec(num_superclasses=1, classes_per_superclass=2, image_size=8, n_train=4,
                                            n_eval=2))
    assert load_source(spec) is load_source(DataSpec(generated=GeneratedSpec(**spec.generated.__dict__)))


def test_imagefolder_spec_without_root_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("ZOO_STUDY_IMAGENET", raising=False)
    with pytest.raises(FileNotFoundError, match="ZOO_STUDY_IMAGENET"):
        load_source(DataSpec(kind="imagefolder"))


def test_class_set_b_is_another_label_space_and_domains_keep_labels_and_ids():
    from zoo_study.data import DataSpec
    from zoo_study.data.generated import class_table, render_split, superclasses

    a = GeneratedSpec(num_superclasses=2, classes_per_superclass=3, n_train=24, n_eval=6, image_size=16)
    b = a.model_copy(update={"class_set": "b"})
    names_a, names_b = {r[0] for r in class_table(a)}, {r[0] for r in class_table(b)}
    assert len(names_b) == 6 and not names_a & names_b  # no class shared
    assert superclasses(b) == ([0, 0, 0, 1, 1, 1], ["ring", "star"])
    photo, labels = render_split(a, "train")
    for domain in ("sketch", "noisy"):
        imgs, labs = render_split(a.model_copy(update={"domain": domain}), "train")
        assert np.array_equal(labs, labels) and not np.array_equal(imgs, photo)  # same samples, another look
    sketch, _ = render_split(a.model_copy(update={"domain": "sketch"}), "train")
    assert np.median(sketch) > np.median(photo)  # a near-white page
    # the new options at their defaults leave a job's data dict (and so every job id) as it was
    assert "class_set" not in DataSpec().job_dict()["generated"] and "domain" not in DataSpec().job_dict()["generated"]
    assert DataSpec(generated=b).job_dict()["generated"]["class_set"] == "b"


# ---------------------------------------------------------------------------------- the package's structure
def _data_modules():
    import ast

    pkg = Path(__file__).resolve().parents[1] / "zoo_study" / "data"
    return {p.stem: ast.parse(p.read_text()) for p in sorted(pkg.glob("*.py"))}


def test_data_package_has_no_import_circle_and_no_imports_inside_functions():
    """zoo_study/data: every import of a sibling at module level, and the sibling graph has no cycle
    (it had one held together by imports inside functions: base -> cache -> base, cache -> imagefolder)."""
    import ast

    modules = _data_modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        deps = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zoo_study.data"):
                target = node.module.split(".")[2] if node.module.count(".") >= 2 else "__init__"
                deps.add(target)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)
                         and (n.module or "").startswith("zoo_study.data")]
                assert not inner, f"{name}.{fn.name} imports {inner[0].module} inside a function"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError(f"import circle: {' -> '.join(path + [m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in graph.get(m, ()):
            if d != "__init__":
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_one_place_asks_whether_a_split_is_cached():
    """'Is this split read from the image cache?' is answered by ImageSplit.is_cached alone."""
    texts = {p.name: p.read_text() for p in (Path(__file__).resolve().parents[1] / "zoo_study" / "data").glob("*.py")}
    asking = sorted(n for n, t in texts.items() if 'getattr(self.images, "is_image_cache"' in t or "is_image_cache\", False" in t)
    assert asking == ["base.py"]
    assert "def _is_cached" not in "".join(texts.values())
