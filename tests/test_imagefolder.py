"""Tests of the ImageFolder / ImageNet source (zoo_study.data.imagefolder).

Why: the paper's studies run on ImageNet laid out as ``train/`` and ``val/`` WordNet-id folders, and
pretrained 1000-way classifiers must be scored in their own label space; an off-by-one in the label
mapping would silently turn every accuracy into noise. Each test writes a tiny JPEG tree with PIL; the
ImageNet names come from timm's ImageNetInfo, which reads files shipped inside timm (no network).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo_study.data import DataSpec, ImageFolderSpec, load_source, make_imagefolder, raw_loader
from zoo_study.data.imagefolder import _imagenet_names, load_raw_image

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


def write_tree(root: Path, classes: dict[str, tuple[int, int, int]], n_train: int = 3, n_val: int = 2,
               size: tuple[int, int] = (24, 18), suffix: str = ".jpg") -> Path:
    """root/{train,val}/<class>/<i><suffix>: solid-colour JPEGs (non-square, to exercise the crop)."""
    for split, n in (("train", n_train), ("val", n_val)):
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", size, rgb).save(folder / f"img{i}{suffix}", quality=95)
    return root


def test_folder_names_are_classes(tmp_path):
    root = write_tree(tmp_path / "ds", COLOURS)
    (root / "train" / "green" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=16))
    assert src.class_names == ["blue", "green", "red"]  # sorted folder names
    assert src.meta["label_space"] == "folders"
    assert len(src.train) == 9 and len(src.eval) == 6
    assert src.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert src.eval.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert src.eval.sample_ids.tolist() == list(range(6))
    assert all(Path(f).suffix == ".jpg" for f in src.train.files)
    # decoded lazily to [3, raw, raw] uint8 with the folder's colour
    img, label, sid = src.train[7]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 16, 16) and label == 2 and sid == 7
    assert np.abs(img.float().mean(dim=(1, 2)).numpy() - np.array(COLOURS["red"])).max() < 6


def test_batches_through_raw_loader(tmp_path):
    root = write_tree(tmp_path / "ds", COLOURS, n_train=2, n_val=2)
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=12))
    raw, labels, sids = next(iter(raw_loader(src.eval, batch_size=4)))
    assert raw.shape == (4, 3, 12, 12) and raw.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1] and sids.tolist() == [0, 1, 2, 3]
    blue = raw[0].float().mean(dim=(1, 2))
    assert blue[2] > 180 and blue[0] < 60


def test_upper_case_suffixes_are_found(tmp_path):
    root = write_tree(tmp_path / "ds", {"a": (10, 10, 10), "b": (200, 200, 200)}, n_train=1, n_val=1, suffix=".JPEG")
    Image.new("RGB", (8, 8)).save(root / "val" / "a" / "extra.Png")
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    assert len(src.train) == 2 and len(src.eval) == 3


def test_wordnet_folders_use_imagenet_indices_and_names(tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("ImageNetInfo must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # n01440764 = tench (index 0), n01443537 = goldfish (1), n01530575 = brambling (10)
    root = write_tree(tmp_path / "imnet", {"n01530575": (1, 2, 3), "n01440764": (9, 9, 9), "n01443537": (5, 5, 5)},
                      n_train=1, n_val=2)
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    assert src.meta["label_space"] == "imagenet-1k"
    assert src.num_classes == 1000 and src.train.num_classes == 1000
    assert src.class_names[0] == "tench" and src.class_names[1] == "goldfish" and src.class_names[10] == "brambling"
    assert src.train.labels.tolist() == [0, 1, 10]  # folders sorted by WordNet id
    assert src.eval.labels.tolist() == [0, 0, 1, 1, 10, 10]


def test_imagenet_names_are_unique():
    names, index = _imagenet_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert index["n01440764"] == 0 and index["n15075141"] == 999
    assert "crane (n02012849)" in names and "crane (n03126707)" in names


def test_wordnet_like_but_unknown_ids_fall_back_to_folders(tmp_path):
    root = write_tree(tmp_path / "ds", {"n01440764": (1, 1, 1), "n99999999": (2, 2, 2)}, n_train=1, n_val=1)
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    assert src.meta["label_space"] == "folders"
    assert src.class_names == ["n01440764", "n99999999"]


def test_classes_missing_from_one_split_keep_one_label_space(tmp_path):
    root = write_tree(tmp_path / "ds", {"a": (1, 1, 1), "b": (2, 2, 2)}, n_train=1, n_val=1)
    write_tree(root, {"c": (3, 3, 3)}, n_train=1, n_val=0)
    (root / "val" / "c").rmdir()
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    assert src.class_names == ["a", "b", "c"]
    assert src.train.labels.tolist() == [0, 1, 2] and src.eval.labels.tolist() == [0, 1]


def test_missing_root_is_a_one_line_error_naming_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "imagenet"
    with pytest.raises(FileNotFoundError) as err:
        make_imagefolder(ImageFolderSpec(root=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "\n" not in msg and "train/" in msg


def test_root_that_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        make_imagefolder(ImageFolderSpec(root=str(f)))


def test_root_without_val_is_a_clear_error(tmp_path):
    root = write_tree(tmp_path / "ds", {"a": (1, 1, 1)}, n_train=1, n_val=1)
    for f in (root / "val" / "a").iterdir():
        f.unlink()
    (root / "val" / "a").rmdir()
    (root / "val").rmdir()
    with pytest.raises(FileNotFoundError) as err:
        make_imagefolder(ImageFolderSpec(root=str(root)))
    msg = str(err.value)
    assert "no val/ folder" in msg and str(root) in msg and "\n" not in msg


def test_split_without_images_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    write_tree(root, {"a": (1, 1, 1)}, n_train=1, n_val=1)
    for f in (root / "val" / "a").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no images found under"):
        make_imagefolder(ImageFolderSpec(root=str(root)))


def test_load_raw_image_short_side_resize_and_centre_crop(tmp_path):
    # left half black, right half white, 40x20: short side 20 -> 10, so 20x10, centre crop 10x10 keeps
    # columns 5..14 of the resized image: the black/white edge sits in the middle of the crop
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 20:] = 255
    path = tmp_path / "edge.png"
    Image.fromarray(arr).save(path)
    img = load_raw_image(path, 10)
    assert tuple(img.shape) == (3, 10, 10)
    row = img[0, 5].tolist()
    assert row[0] < 10 and row[-1] > 245 and max(row[:4]) < 10 and min(row[6:]) > 245


def test_data_spec_imagefolder_from_environment(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "envds", {"x": (1, 2, 3), "y": (4, 5, 6)}, n_train=1, n_val=1)
    monkeypatch.setenv("ZOO_STUDY_IMAGENET", str(root))
    src = load_source(DataSpec(kind="imagefolder", raw_size=8))
    assert src.class_names == ["x", "y"] and src.train.raw_size == 8
    # the per-process cache keys on the resolved root: a new ZOO_STUDY_IMAGENET gives the new dataset
    other = write_tree(tmp_path / "envds2", {"p": (1, 2, 3), "q": (4, 5, 6), "r": (7, 8, 9)}, n_train=1, n_val=1)
    monkeypatch.setenv("ZOO_STUDY_IMAGENET", str(other))
    assert load_source(DataSpec(kind="imagefolder", raw_size=8)).class_names == ["p", "q", "r"]


# ---------------------------------------------------------------------------------------- the file index
def _index_source(root, cache_dir, **kw):
    return make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8, cache_dir=str(cache_dir), **kw))


def test_file_index_is_built_once_and_read_instead_of_walking_and_stat(tmp_path, monkeypatch):
    from zoo_study.data import cache_layout, index as index_mod
    from zoo_study.data.imagefolder import IMAGE_SUFFIXES

    root = write_tree(tmp_path / "ds", COLOURS, n_train=3, n_val=2)
    walked = _index_source(root, tmp_path / "cache")
    index_files = list((tmp_path / "cache").rglob(index_mod.INDEX_FILE))
    assert len(index_files) == 1
    rows = pq_rows(index_files[0])
    assert {r["path"] for r in rows} == {str(Path(f).relative_to(root)) for f in walked.train.files + walked.eval.files}
    first = next(r for r in rows if r["path"] == "val/blue/img0.jpg")
    st = (root / "val" / "blue" / "img0.jpg").stat()
    assert (first["size"], first["mtime_ns"], first["label"]) == (st.st_size, st.st_mtime_ns, 0)

    import copy

    stat_based = copy.copy(walked.eval)
    stat_based.file_stats = None  # the cache key from os.stat, as before the index
    by_stat = cache_layout.subset_dir(stat_based, walked.eval.cache)

    def no_walk(*a, **k):
        raise AssertionError("a task walked the root although the index is current")

    real_stat = cache_layout.os.stat

    def no_file_stat(path, *a, **k):  # folders may be stat-ed (the index's check), image files not
        assert not str(path).lower().endswith(IMAGE_SUFFIXES), f"stat of {path}"
        return real_stat(path, *a, **k)

    monkeypatch.setattr("zoo_study.data.imagefolder.scan", no_walk)
    monkeypatch.setattr(cache_layout.os, "stat", no_file_stat)
    again = _index_source(root, tmp_path / "cache")
    assert again.train.files == walked.train.files and again.eval.labels.tolist() == walked.eval.labels.tolist()
    assert cache_layout.subset_dir(again.eval, again.eval.cache) == by_stat  # same key: existing caches reused


def test_file_index_is_rebuilt_when_a_file_is_added_and_on_refresh(tmp_path, monkeypatch):
    from zoo_study.data import imagefolder

    root = write_tree(tmp_path / "ds", COLOURS, n_train=2, n_val=2)
    assert len(_index_source(root, tmp_path / "cache").eval) == 6
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "val" / "red" / "zzz.jpg")
    assert len(_index_source(root, tmp_path / "cache").eval) == 7  # the folder's mtime changed: walked again
    scans = []
    real = imagefolder.scan
    monkeypatch.setattr(imagefolder, "scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    _index_source(root, tmp_path / "cache")
    _index_source(root, tmp_path / "cache", index="refresh")  # the driver's step: always a full walk
    assert scans == [1]


def pq_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# ------------------------------------------------------------------------ loader workers and pinned memory
def test_on_disk_splits_decode_in_workers_with_pinned_memory_under_cuda(tmp_path, monkeypatch):
    from zoo_study.data.base import default_workers

    root = write_tree(tmp_path / "ds", COLOURS, n_train=2, n_val=2)
    src = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8))
    loader = raw_loader(src.eval, batch_size=2)
    assert loader.num_workers == min(default_workers(), 3) >= 1 and loader.pin_memory is False  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert raw_loader(src.eval, batch_size=2).pin_memory is True
    own = make_imagefolder(ImageFolderSpec(root=str(root), raw_size=8, loader_workers=0))
    assert raw_loader(own.eval, batch_size=2).num_workers == 0  # data.loader_workers = 0: in this process
    with pytest.raises(ValueError, match="loader_workers"):
        ImageFolderSpec(root="x", loader_workers=-1)


def test_in_memory_splits_stay_in_process_and_unpinned(monkeypatch):
    from zoo_study.data import GeneratedSpec, make_generated

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    src = make_generated(GeneratedSpec(n_train=4, n_eval=4, num_superclasses=2, classes_per_superclass=2))
    loader = raw_loader(src.eval, batch_size=2)
    assert loader.num_workers == 0 and loader.pin_memory is False


# ----------------------------------------------------------------- the data root and cache folder, resolved
def test_resolve_data_paths_on_the_driver(tmp_path, monkeypatch):
    from zoo_study.data.spec import CACHE_ENV, IMAGENET_ENV, resolve_data_paths

    monkeypatch.setenv(IMAGENET_ENV, str(tmp_path / "in"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    spec = DataSpec(kind="imagefolder")
    assert resolve_data_paths(spec) == (str(tmp_path / "in"), str(tmp_path / "c"))
    assert spec.runtime_dict() == {"cache_dir": str(tmp_path / "c")}  # shipped with each job, outside its id
    assert resolve_data_paths(DataSpec(kind="imagefolder", cache_dir="none"))[1] is None
    assert DataSpec(kind="imagefolder", cache_dir="none").runtime_dict() == {"cache_dir": "none"}
    assert resolve_data_paths(DataSpec(kind="imagefolder", cache_dir="~/x"))[1] == str(Path("~/x").expanduser())
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_data_paths(spec)[1] == str(tmp_path / "home" / ".cache" / "zoo-study" / "images")
    assert resolve_data_paths(DataSpec()) == (None, None) and DataSpec().runtime_dict() == {}


def test_job_ids_change_only_for_imagefolder_data(tmp_path):
    """Generated data keeps its job dict; ImageFolder data's pixels are now timm's (cached or not), so the
    geometry enters its ids, except for the older raw squares without a cache (the same pixels as before)."""
    assert "cache_geometry" not in DataSpec().job_dict() and "on_bad_image" not in DataSpec().job_dict()
    folder = DataSpec(kind="imagefolder", root="/r")
    assert folder.job_dict()["cache_geometry"] == "model" and folder.job_dict()["on_bad_image"] == "fail"
    old_raw = DataSpec(kind="imagefolder", root="/r", cache_dir="none", cache_geometry="raw")
    assert "cache_geometry" not in old_raw.job_dict() and "on_bad_image" not in old_raw.job_dict()
    assert folder.job_dict() == DataSpec(kind="imagefolder", root="/r", cache_dir="/elsewhere", loader_workers=3).job_dict()


# ------------------------------------------------------------- num_classes of a subset of ImageNet's classes
def _prediction_bytes(model_id, labels, preds):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from zoo_study.store import PREDICTION_SCHEMA

    n = len(labels)
    t = pa.table({"model_id": [model_id] * n, "sample_id": list(range(n)), "label": labels, "pred": preds,
                  "p_label": [0.5] * n, "p_max": [0.5] * n, "topk": [[p] for p in preds]}, schema=PREDICTION_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def test_score_counts_the_classes_of_an_imagenet_subset_not_the_largest_label(tmp_path):
    """Three ImageNet classes (ids 3, 500, 900), two eval images each. By hand: the teacher is right on all
    but sample 5, the student on samples 0, 3, 5; positive flips: one each in classes 3, 500, 900 -> entropy
    ln 3, and the uniform reference ln(num_classes) must be ln 3 (it was ln 901); sample 5 is the student's
    one negative flip (class 900). Per-class rows keep ImageNet's class ids."""
    import math

    from pipelines.executors import score_job
    from pipelines.jobs import JobContext
    from pipelines.study import plan_stage
    from zoo_study.config import validate_config
    from zoo_study.store import ResultsLayout

    labels = [3, 3, 500, 500, 900, 900]
    preds = {"t": [3, 3, 500, 500, 900, 7], "s": [3, 999, 1, 500, 2, 900]}
    layout = ResultsLayout("")
    inputs = {str(layout.predictions(m)): _prediction_bytes(m, labels, p) for m, p in preds.items()}
    raw = {"study": {"name": "x", "results_root": str(tmp_path / "runs")}, "zoo": {"embedded": ["resnet10t_w16", "mixer_p8"]},
           "data": {"kind": "imagefolder", "root": str(tmp_path)}}
    (job,) = plan_stage(validate_config(raw), "score")
    spec = {**job.spec, "models": ["t", "s"], "random_teachers": []}
    assert spec["classes"] == "present"
    out = score_job(spec, inputs, JobContext("j", "score", {}, ()))
    row = next(r for r in out["pairs"].to_pylist() if (r["teacher"], r["student"]) == ("t", "s"))
    assert row["num_classes"] == 3 and row["n_pos"] == 3 and row["n_neg"] == 1
    assert math.isclose(row["entropy"], math.log(3)) and math.isclose(row["entropy"], math.log(row["num_classes"]))
    cells = {(r["class_id"], r["pos_flips"], r["neg_flips"]) for r in out["pair_classes"].to_pylist()
             if (r["teacher"], r["student"]) == ("t", "s")}
    assert cells == {(3, 1, 0), (500, 1, 0), (900, 1, 1)}
    del raw["data"]  # generated data: the score job's spec (and id) is unchanged
    (gen,) = plan_stage(validate_config(raw), "score")
    assert "classes" not in gen.spec


# ------------------------------------------------- the shipped ImageNet config predicts exactly as timm does
# Tiny stand-ins for the paper's zoo with its real variety of data configs: 224/0.875 bilinear, 256/0.9
# bicubic with mean 0 / std 1, 288/1.0 bicubic; random weights (local safetensors), heads scaled so that
# the top classes are well apart.
E2E_ARCHS = {"r18": "resnet18.tv_in1k", "mvit": "mobilevit_xxs.cvnets_in1k", "evit": "efficientvit_b1.r288_in1k"}


def _checkpoint(arch: str, path: Path, seed: int) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=1000)
    head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear) and mod.out_features == 1000][-1]
    with torch.no_grad():
        head.weight.mul_(30.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))


def _timm_reference(arch: str, path: Path, files: list[str]) -> torch.Tensor:
    """timm's own way: create_transform(**resolve_data_config(model=m)) on each decoded image, then forward."""
    import timm
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config

    m = timm.create_model(arch, pretrained=False, num_classes=1000)
    m.load_state_dict(load_file(str(path)))
    m.eval()
    t = create_transform(**resolve_data_config(model=m))
    with torch.no_grad():
        return torch.cat([m(t(Image.open(f).convert("RGB")).unsqueeze(0)).softmax(-1) for f in files])


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["default", "none"])
def test_imagenet_10pct_config_predicts_exactly_as_timm(tmp_path, monkeypatch, cache):
    import pyarrow.parquet as pq

    from helpers.imagenet_tree import imagenet_wnids, write_imagenet_tree
    from pipelines.cli import main

    config = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "imagenet_10pct.toml"
    ids = [3, 500, 900]
    root = write_imagenet_tree(tmp_path / "imagenet", imagenet_wnids(ids), n_train=1, n_val=4)
    monkeypatch.setenv("ZOO_STUDY_CACHE", str(tmp_path / "cache"))
    models = []
    for seed, (mid, arch) in enumerate(E2E_ARCHS.items()):
        _checkpoint(arch, tmp_path / f"{mid}.safetensors", seed)
        models.append(f'{{id = "{mid}", source = "local", arch = "{arch}", checkpoint = "{tmp_path / f"{mid}.safetensors"}"}}')
    runs = tmp_path / "runs"
    sets = [f"data.root={root}", f"study.results_root={runs}", "study.device=cpu", 'zoo.paper_study=""',
            "zoo.random_teachers=[]", f"zoo.models=[{', '.join(models)}]", "transfer.enabled=false",
            "predict.batch_size=5", "ray.address=local", "ray.cpus_per_job=1", "ray.gpus_per_job=0",
            "data.loader_workers=2"] + ([f"data.cache_dir={cache}"] if cache == "none" else [])
    argv = ["run", str(config), "--no-progress", "--stage", "zoo,predict,score"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    files = sorted(str(p) for p in (root / "val").rglob("*.JPEG"))
    for mid, arch in E2E_ARCHS.items():
        got = pq.read_table(runs / "predictions" / f"model={mid}.parquet").to_pylist()
        got.sort(key=lambda r: r["sample_id"])
        want = _timm_reference(arch, tmp_path / f"{mid}.safetensors", files)
        assert [r["label"] for r in got] == [i for i in ids for _ in range(4)]
        assert [r["pred"] for r in got] == want.argmax(-1).tolist(), mid
        assert np.allclose([r["p_max"] for r in got], want.max(-1).values.numpy(), atol=2e-5), mid
        assert [r["topk"] for r in got] == want.topk(5).indices.tolist(), mid
    pairs = pq.read_table(runs / "scores" / "pairs.parquet").to_pylist()
    assert {r["num_classes"] for r in pairs} == {3}  # the study's classes, not the largest label + 1 (901)
    builds = [line for f in (tmp_path / "cache").rglob("builds.jsonl") for line in f.read_text().splitlines()]
    # the driver's data step built the eval split at all three geometries at once: no predict task built any
    assert len(builds) == (1 if cache == "default" else 0)
    if builds:
        assert sorted(json.loads(builds[0])["geometries"]) == sorted(
            {"r256-c224-bilinear", "r284-c256-bicubic", "r288-c288-bicubic"})


def test_a_cache_folder_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    from pipelines.cli import main

    root = write_tree(tmp_path / "ds", COLOURS, n_train=1, n_val=1)
    (tmp_path / "afile").write_text("x")
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[study]\nname = "s"\nresults_root = "{tmp_path / "runs"}"\n[data]\nkind = "imagefolder"\n'
                   f'root = "{root}"\ncache_dir = "{tmp_path / "afile"}"\n[zoo]\nembedded = ["mixer_p8"]\n')
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "data.cache_dir=" in err[0] and "is a file" in err[0]
    assert not (tmp_path / "runs").exists()
