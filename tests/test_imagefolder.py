"""Tests of the ImageFolder / ImageNet source (zoo_study.data.imagefolder).

Why: the paper's studies run on ImageNet laid out as ``train/`` and ``val/`` WordNet-id folders, and
pretrained 1000-way classifiers must be scored in their own label space; an off-by-one in the label
mapping would silently turn every accuracy into noise. Each test writes a tiny JPEG tree with PIL; the
ImageNet names come from timm's ImageNetInfo, which reads files shipped inside timm (no network).
"""

from __future__ import annotations

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
