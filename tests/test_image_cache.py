"""Tests of the decoded-image cache (zoo_study.data.cache).

Why: an ImageNet job decodes ~100k JPEGs per epoch; the cache decodes them once and every later job
reads memory maps. A cache is only worth having if it is never stale (a changed root, file list or
geometry must not reuse old pixels), never built twice by two jobs starting together, and if its pixels
are exactly what each model's timm eval transform makes from the original photograph (the lazy path's
256-pixel squares are resampled a second time per model, and upsampled for 288/384 models). Every test
writes its own small JPEG tree with PIL: smooth random images with some structure, non-square.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

import zoo_study  # noqa: F401  (torchvision compat before timm)
from timm.data import create_transform

from zoo_study.data import ImageFolderSpec, ModelPreprocess, TransferAugment, make_imagefolder, raw_loader
from zoo_study.data import cache as cache_mod
from zoo_study.data.cache import (BadImageError, RenderLoader, geometry_of, EvalGeometry, RawGeometry, Views, augment_batch, cached_split,
                                  model_input)
from zoo_study.data.imagefolder import load_raw_image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_CONFIGS = [  # (input size, crop_pct): the zoo's common eval geometries, bicubic, ImageNet mean/std
    ((3, 224, 224), 0.875),
    ((3, 224, 224), 0.95),
    ((3, 288, 288), 1.0),
    ((3, 384, 384), 1.0),
]


def cfg(input_size=(3, 24, 24), crop_pct=0.875, interpolation="bicubic"):
    return {"input_size": input_size, "crop_pct": crop_pct, "interpolation": interpolation, "mean": MEAN,
            "std": STD, "crop_mode": "center"}


def smooth_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like RGB image: a smooth random field, a few shapes, a little noise (realistic JPEGs)."""
    low = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(4, w // 2 + 5)), y0 + int(rng.integers(4, h // 2 + 5))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(1.0))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def write_tree(root: Path, classes=("a", "b"), n_train=3, n_val=2, size=(40, 30), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size if i % 2 == 0 else size[::-1]  # landscape and portrait
                smooth_image(rng, w, h).save(d / f"{i}.jpg", quality=90)
    return root


def source(root: Path, cache_dir: Path, **kw):
    kw = {"raw_size": 32, "cache_workers": 1, **kw}
    return make_imagefolder(ImageFolderSpec(root=str(root), cache_dir=str(cache_dir), **kw))


def build_count(cache_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in Path(cache_dir).rglob("builds.jsonl"))


def first_batch(split, batch_size=64):
    return next(iter(raw_loader(split, batch_size)))


# ------------------------------------------------------------------------------------------- parity
def test_per_model_inputs_match_timm_eval_transform_on_non_square_jpegs(tmp_path):
    """Cached input == timm's create_transform(...) on the PIL image, for 500x375 and 375x500 JPEGs.

    Tolerance 1e-6: both decode with PIL, resize with PIL's antialiased resize with the same size and
    filter, crop with torchvision's offsets and divide/subtract/divide in the same order, so the
    difference is expected to be exactly zero; 1e-6 leaves room for float32 op fusion only. The lazy
    path (256 squares resampled per model) is far off on the same images, which is why the cache
    stores per-geometry arrays.
    """
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for split in ("train", "val"):
        d = root / split / "x"
        d.mkdir(parents=True)
        for i, (w, h) in enumerate([(500, 375), (375, 500)]):
            smooth_image(rng, w, h).save(d / f"{i}.jpg", quality=90)
    configs = [cfg(s, c) for s, c in TIMM_CONFIGS] + [cfg((3, 224, 224), 0.9, "bilinear"), cfg((3, 224, 192), 0.9)]
    src = source(root, tmp_path / "cache", raw_size=256)
    cached = cached_split(src.eval, configs)
    views, _, sids = first_batch(cached)
    assert isinstance(views, Views) and len(views) == len(configs) and sids.tolist() == [0, 1]
    lazy_raw = first_batch(src.eval)[0]
    for c in configs:
        tf = create_transform(input_size=c["input_size"], crop_pct=c["crop_pct"], interpolation=c["interpolation"],
                              mean=MEAN, std=STD, is_training=False)
        ref = torch.stack([tf(Image.open(f).convert("RGB")) for f in src.eval.files])
        ours = model_input(views, c)
        assert ours.shape == ref.shape == (2, *c["input_size"])
        assert (ours - ref).abs().max().item() <= 1e-6, c
        lazy = ModelPreprocess.from_data_config(c)(lazy_raw)
        if c["input_size"][1] != 224 or c["crop_pct"] != 0.875:
            assert (lazy - ref).abs().max().item() > 0.05  # the double resample / upsample of the lazy path


def test_geometry_keys_and_distinct_geometries():
    pre = ModelPreprocess.from_data_config(cfg((3, 224, 224), 0.875))
    assert pre.geometry == EvalGeometry((256, 256), (224, 224), "bicubic") and pre.geometry.key == "r256-c224-bicubic"
    other_norm = ModelPreprocess.from_data_config({**cfg((3, 224, 224), 0.875), "mean": (0.5,) * 3})
    assert cache_mod.distinct_geometries([pre, other_norm, cfg((3, 288, 288), 1.0)]) == [
        pre.geometry, EvalGeometry((288, 288), (288, 288), "bicubic")]
    assert EvalGeometry((256, 292), (224, 256), "bilinear").key == "r256x292-c224x256-bilinear"


# -------------------------------------------------------------------------------------- build, reuse
def _concurrent_child(role, root, cache_dir, events, queue):
    building, waiting, go = events
    if role == "builder":  # holds the lock inside its build until the parent says go
        real = cache_mod.decode_rgb

        def gated(path):
            building.set()
            go.wait(30)
            return real(path)

        cache_mod.decode_rgb = gated
    else:  # tells the parent when it finds the lock taken and starts waiting

        class Seen(logging.Handler):
            def emit(self, record):
                if "waiting for another process" in record.getMessage():
                    waiting.set()

        logging.getLogger("zoo_study.data.cache").addHandler(Seen())
        logging.getLogger("zoo_study.data.cache").setLevel(logging.INFO)
    split = cached_split(source(Path(root), Path(cache_dir)).train, [cfg()])
    views = first_batch(split)[0]
    geom = next(iter(views))
    manifest = json.loads((Path(split.images.paths[geom]).parent / "manifest.json").read_text())
    queue.put((role, manifest["build_id"], len(split), float(views[geom].float().mean())))


def test_built_once_under_two_concurrent_processes(tmp_path):
    """The second process asks while the first is building: it waits on the lock and reads that build."""
    root = write_tree(tmp_path / "ds", n_train=5)
    ctx = multiprocessing.get_context("fork")
    events, queue = (ctx.Event(), ctx.Event(), ctx.Event()), ctx.Queue()
    building, waiting, go = events
    procs = {role: ctx.Process(target=_concurrent_child, args=(role, str(root), str(tmp_path / "cache"), events, queue))
             for role in ("builder", "waiter")}
    try:
        procs["builder"].start()
        assert building.wait(30)
        procs["waiter"].start()
        assert waiting.wait(30)  # the waiter found the lock held, while the build is in progress
        go.set()
        results = dict((r[0], r[1:]) for r in (queue.get(timeout=60) for _ in procs))
        for p in procs.values():
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        go.set()
        for p in procs.values():
            if p.is_alive():
                p.kill()
    assert build_count(tmp_path / "cache") == 1
    assert results["builder"] == results["waiter"] and results["waiter"][1] == 10  # one build, same pixels


def test_reused_by_a_later_call_without_decoding(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "ds", n_train=6)
    src = source(root, tmp_path / "cache", cache_workers=2)  # the parallel (process pool) build
    first = cached_split(src.train, [cfg(), cfg((3, 16, 16), 1.0)])
    a = first_batch(first)[0]
    assert build_count(tmp_path / "cache") == 1

    def no_decode(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(cache_mod, "decode_rgb", no_decode)
    again = cached_split(source(root, tmp_path / "cache").train, [cfg((3, 16, 16), 1.0), cfg()])
    b = first_batch(again)[0]
    assert build_count(tmp_path / "cache") == 1
    assert set(a) == set(b) and all(torch.equal(a[g], b[g]) for g in a)
    # pixels equal a direct render of each decoded file
    g = EvalGeometry((27, 27), (24, 24), "bicubic")
    direct = np.stack([cache_mod.render(Image.open(f).convert("RGB"), g) for f in src.train.files])
    assert np.array_equal(a[g].numpy(), direct)


def test_invalidated_when_root_raw_size_or_file_list_changes(tmp_path):
    cache_dir = tmp_path / "cache"
    root = write_tree(tmp_path / "ds")
    cached_split(source(root, cache_dir, cache_geometry="raw").eval)
    assert build_count(cache_dir) == 1
    cached_split(source(root, cache_dir, cache_geometry="raw").eval)
    assert build_count(cache_dir) == 1  # same root, split, files, size: reused
    cached_split(source(root, cache_dir, cache_geometry="raw", raw_size=24).eval)
    assert build_count(cache_dir) == 2  # raw size
    cached_split(source(root, cache_dir, cache_geometry="raw").train)
    assert build_count(cache_dir) == 3  # split
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    cached_split(source(other, cache_dir, cache_geometry="raw").eval)
    assert build_count(cache_dir) == 4  # root
    smooth_image(np.random.default_rng(5), 30, 40).save(root / "val" / "a" / "new.jpg")
    assert len(cached_split(source(root, cache_dir, cache_geometry="raw").eval)) == 5
    assert build_count(cache_dir) == 5  # file list
    cached_split(source(root, cache_dir).eval, [cfg((3, 20, 20), 0.9)])
    assert build_count(cache_dir) == 6  # a new model geometry


def test_raw_geometry_is_the_lazy_path_in_the_same_order(tmp_path):
    root = write_tree(tmp_path / "ds", n_train=5)
    src = source(root, tmp_path / "cache", cache_geometry="raw")
    cached = cached_split(src.train)
    assert cached.images.geometries == [RawGeometry(32)]
    img, label, sid = cached[3]
    assert torch.equal(img, load_raw_image(src.train.files[3], 32)) and (label, sid) == (int(src.train.labels[3]), 3)
    for drop_last, n_batches in ((True, 2), (False, 3)):
        lazy_loader = raw_loader(src.train, 4, shuffle=True, seed=3, drop_last=drop_last)
        lazy = [b for _ in range(3) for b in lazy_loader]  # three epochs of one loader, as the transfer loop
        loader = raw_loader(cached, 4, shuffle=True, seed=3, drop_last=drop_last)
        fast = [b for _ in range(3) for b in loader]
        assert len(loader) == len(lazy_loader) == n_batches and len(fast) == len(lazy) == 3 * n_batches
        for (x1, y1, s1), (x2, y2, s2) in zip(lazy, fast):
            assert torch.equal(s1, s2) and torch.equal(y1, y2) and torch.equal(x1, x2)
            assert x2.dtype == torch.uint8 and y2.dtype == torch.int64


def test_subsets_keep_sample_ids_and_are_cached_on_their_own(tmp_path):
    root = write_tree(tmp_path / "ds", n_train=4)
    src = source(root, tmp_path / "cache")
    sub = src.train.subset(np.array([6, 1, 4]))
    cached = cached_split(sub, [cfg()])
    assert cached.sample_ids.tolist() == [6, 1, 4] and cached.labels.tolist() == [1, 0, 1]
    sub2 = cached.subset(np.array([2, 0]))
    x, _, sids = first_batch(sub2)
    assert sids.tolist() == [4, 6]
    g = next(iter(x))
    assert torch.equal(x[g][0], cached[2][0][g]) and cached_split(sub2, [cfg()]) is sub2
    with pytest.raises(ValueError, match="without geometry r16-c16-bicubic"):
        cached_split(sub2, [cfg((3, 16, 16), 1.0)])


# ---------------------------------------------------------------------------------------- bad input
def _corrupt(root: Path) -> list[Path]:
    bad = root / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 5)
    good = next((root / "train" / "b").glob("*.jpg")).read_bytes()
    trunc = root / "train" / "b" / "truncated.jpg"
    trunc.write_bytes(good[: len(good) // 3])
    return [bad, trunc]


def test_corrupt_image_fails_the_build_naming_it(tmp_path):
    root = write_tree(tmp_path / "ds")
    bad = _corrupt(root)
    src = source(root, tmp_path / "cache")
    with pytest.raises(BadImageError) as err:
        cached_split(src.train, [cfg()])
    assert str(bad[0]) in str(err.value) and "1 more" in str(err.value) and err.value.path == str(bad[0])
    assert not list((tmp_path / "cache").rglob("manifest.json")) and not list((tmp_path / "cache").rglob(".tmp-*"))


def test_corrupt_image_skipped_reported_once_and_counted(tmp_path, caplog):
    root = write_tree(tmp_path / "ds")
    bad = _corrupt(root)
    src = source(root, tmp_path / "cache", on_bad_image="skip")
    bad_ids = [int(src.train.sample_ids[src.train.files.index(str(p))]) for p in bad]
    with caplog.at_level(logging.WARNING, logger="zoo_study.data.cache"):
        cached = cached_split(src.train, [cfg()])
        again = cached_split(source(root, tmp_path / "cache", on_bad_image="skip").train, [cfg()])
    reports = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(reports) == 2 and all(any(str(p) in m for m in reports) for p in bad)  # once each, at build
    assert len(cached) == len(again) == len(src.train) - 2
    assert not set(bad_ids) & set(cached.sample_ids.tolist())
    manifest = json.loads(next((tmp_path / "cache").rglob("manifest.json")).read_text())
    assert manifest["n_skipped"] == 2 and {s["path"] for s in manifest["skipped"]} == {str(p) for p in bad}
    assert manifest["n_images"] == len(cached) and manifest["n_files"] == len(src.train)
    assert len(list(raw_loader(cached, 3))) == 2


def test_empty_and_one_sided_class_folders_are_warned_and_recorded(tmp_path, caplog):
    root = write_tree(tmp_path / "ds", classes=("a", "b"), n_train=1, n_val=1)
    write_tree(root, classes=("only_train",), n_train=1, n_val=0)
    (root / "train" / "empty").mkdir()
    (root / "val" / "only_val").mkdir()
    smooth_image(np.random.default_rng(0), 20, 20).save(root / "val" / "only_val" / "x.jpg")
    with caplog.at_level(logging.WARNING, logger="zoo_study.data.imagefolder"):
        src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "empty" in text and "only_train" in text and "only_val" in text
    assert src.meta["empty_class_folders"] == {"train": ["empty"], "val": ["only_train"]}
    assert src.meta["classes_only_in"] == {"train": ["only_train"], "val": ["only_val"]}
    assert src.class_names == ["a", "b", "empty", "only_train", "only_val"]


def test_spec_validates_cache_options():
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFolderSpec(root="x", on_bad_image="ignore")
    with pytest.raises(ValueError, match="cache_geometry"):
        ImageFolderSpec(root="x", cache_geometry="fast")
    from zoo_study.data.base import ImageSplit

    lazy = ImageSplit(labels=np.zeros(1), sample_ids=np.zeros(1), class_names=["a"], raw_size=8, files=["x.jpg"],
                      loader=load_raw_image)
    # no cache configured: decoded on the fly at the models' geometries (raw squares only when asked for)
    on_the_fly = cached_split(lazy, [cfg()])
    assert isinstance(on_the_fly.loader, RenderLoader) and on_the_fly.loader.geometries == (geometry_of(cfg()),)
    lazy.pixels = "raw"
    assert cached_split(lazy, [cfg()]) is lazy


# ------------------------------------------------------------------------ consumers: predict, augment
def test_predict_and_augment_read_views(tmp_path):
    import timm

    from zoo_study.predict import predict_logits

    root = write_tree(tmp_path / "ds", n_val=3)
    src = source(root, tmp_path / "cache")
    c_student, c_teacher = cfg((3, 24, 24), 0.875), cfg((3, 32, 32), 1.0, "bilinear")
    cached = cached_split(src.eval, [c_student, c_teacher])
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2, channels=(4, 8, 8, 8)).eval()
    ids, labels, probs = predict_logits(model, cached, ModelPreprocess.from_data_config(c_teacher), batch_size=4)
    tf = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear", mean=MEAN, std=STD)
    with torch.no_grad():
        ref = torch.softmax(model(torch.stack([tf(Image.open(f).convert("RGB")) for f in src.eval.files])), 1)
    assert ids.tolist() == list(range(6)) and np.allclose(probs, ref.numpy(), atol=1e-5)

    # one augmentation, the same random draws in every geometry; the generator advances as for one call
    views = first_batch(cached)[0]
    aug = TransferAugment()
    gen = torch.Generator().manual_seed(4)
    out = augment_batch(aug, views, gen)
    for g in views:
        assert torch.equal(out[g], aug(views[g], torch.Generator().manual_seed(4)))
    ref_gen = torch.Generator().manual_seed(4)
    aug(views[next(iter(views))], ref_gen)
    assert torch.equal(gen.get_state(), ref_gen.get_state())
    # tensor methods apply to every view (the transfer loop's feature-size probe)
    probe = cached[0][0].unsqueeze(0).expand(2, -1, -1, -1).to("cpu")
    assert probe.batch_size == 2 and all(probe[g].shape[0] == 2 for g in probe)
    with pytest.raises(ValueError, match="no view at geometry r16-c16-bicubic"):
        ModelPreprocess.from_data_config(cfg((3, 16, 16), 1.0))(views)


def test_geometries_sharing_a_resize_share_it_and_match_one_by_one():
    im = smooth_image(np.random.default_rng(2), 50, 37)
    gs = [EvalGeometry((40, 40), (32, 32), "bicubic"), EvalGeometry((40, 40), (40, 40), "bicubic"),
          EvalGeometry((40, 40), (32, 32), "bilinear"), RawGeometry(36), EvalGeometry((40, 48), (32, 40), "bicubic")]
    together = cache_mod.render_all(im, gs)
    for g, arr in zip(gs, together):
        assert np.array_equal(arr, cache_mod.render(im, g)) and arr.shape == (3, *g.crop)
    # the 32 crop is the centre of the 40 one (same resize): offsets round((40 - 32) / 2) = 4
    assert np.array_equal(together[0], together[1][:, 4:36, 4:36])


# --------------------------------------------------------------------------- the data step before GPU tasks
def test_prepare_builds_every_geometry_so_tasks_neither_build_nor_walk(tmp_path, monkeypatch):
    """The driver's CPU step indexes the root and caches the eval split and the transfer set at every
    model's geometry; a task then builds nothing, walks nothing and reads the same images."""
    from zoo_study.data import DataSpec, imagefolder, load_source
    from zoo_study.data.prepare import SubsetSpec, prepare_images
    from zoo_study.transfer.config import TransferConfig
    from zoo_study.transfer.inputs import transfer_set

    root = write_tree(tmp_path / "ds", n_train=4, n_val=2)
    spec = DataSpec(kind="imagefolder", root=str(root), raw_size=32, cache_dir=str(tmp_path / "cache"), cache_workers=1)
    student, teacher = cfg(), cfg((3, 16, 16), 1.0, "bilinear")
    report = prepare_images(spec, [student, teacher], [SubsetSpec(per_class=2, seed=3)])
    assert report.n_eval == 4 and list(report.n_train.values()) == [4] and len(report.geometries) == 2

    def refuse(*a, **k):
        raise AssertionError("a task built the cache or walked the root")

    monkeypatch.setattr(cache_mod, "_build", refuse)
    monkeypatch.setattr(imagefolder, "scan", refuse)
    src = load_source(spec.model_copy(update={"loader_workers": 0}))
    config = TransferConfig(method="kl", transfer_per_class=2, subset_seed=3)
    train = cached_split(transfer_set(src, config), [teacher, student])
    ev = cached_split(src.eval, [student])
    assert train.is_cached and ev.is_cached and len(train) == 4
    x, _, _ = first_batch(ev)
    direct = np.stack([cache_mod.render(Image.open(f).convert("RGB"), geometry_of(student)) for f in src.eval.files])
    assert np.array_equal(x[geometry_of(student)].numpy(), direct)


def test_too_little_disk_decodes_on_the_fly_with_the_same_pixels(tmp_path, monkeypatch, caplog):
    root = write_tree(tmp_path / "ds", n_train=1, n_val=2)
    want = first_batch(cached_split(source(root, tmp_path / "roomy").eval, [cfg()]))[0]
    full = type("Usage", (), {"free": 0})
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: full)
    with caplog.at_level(logging.WARNING, logger="zoo_study.data.cache"):
        split = cached_split(source(root, tmp_path / "full").eval, [cfg()])
    assert not split.is_cached and isinstance(split.loader, RenderLoader)
    assert "decoding on the fly" in caplog.text and "GB are free" in caplog.text
    got = first_batch(split)[0]
    assert torch.equal(got[geometry_of(cfg())], want[geometry_of(cfg())])
