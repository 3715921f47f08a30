"""``data.on_bad_image`` applies to zoo training and adaptation too (issue 22).

Before: with ``data.cache_dir`` set and ``on_bad_image = "skip"``, the zoo stage still decoded every
training image lazily, failed on the first unreadable one, and its error told the user to set
``data.cache_dir``, which was set. Now zoo training reads the split through the image cache (the raw
geometry, the same pixels as the lazy path), so an unreadable image is skipped (``skip``) or named by the
cache build (``fail``), and the lazy path's hint fits the config it runs under.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo_study.data import ImageFolderSpec, make_imagefolder
from zoo_study.data.cache import BadImageError
from zoo_study.zoo.recipes import recipe_by_id
from zoo_study.zoo.train import train_recipe


def _tree(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    bad = root / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG not really a png" * 4)
    return bad


def _recipe():
    # the smallest embedded CNN at 16 px, one batch of the whole split (so every image is read, the broken one
    # too, whatever the shuffle): this is about data, not learning
    return replace(recipe_by_id("resnet10t_w16"), input_size=16, epochs=1.0, batch_size=64)


def test_skip_applies_to_zoo_training(tmp_path):
    bad = _tree(tmp_path / "ds")
    src = make_imagefolder(ImageFolderSpec(root=str(tmp_path / "ds"), raw_size=16, cache_dir=str(tmp_path / "cache"),
                                           on_bad_image="skip"))
    assert str(bad) in src.train.files
    blob, info = train_recipe(_recipe(), src, epochs_scale=0.5)
    assert blob and info["steps"] >= 1 and np.isfinite(info["final_loss"])
    manifest = next((tmp_path / "cache").rglob("manifest.json")).read_text()
    assert str(bad) in manifest  # left out of training, and listed where the cache says so


def test_fail_names_the_image_without_asking_for_a_cache_that_is_set(tmp_path):
    bad = _tree(tmp_path / "ds")
    src = make_imagefolder(ImageFolderSpec(root=str(tmp_path / "ds"), raw_size=16, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(BadImageError) as err:
        train_recipe(_recipe(), src, epochs_scale=0.5)
    assert str(bad) in str(err.value) and "on_bad_image='skip'" in str(err.value)
    assert "set data.cache_dir" not in str(err.value)


@pytest.mark.parametrize("cache", [False, True])
def test_lazy_read_error_hint_fits_the_config(tmp_path, cache):
    bad = _tree(tmp_path / "ds")
    src = make_imagefolder(ImageFolderSpec(root=str(tmp_path / "ds"), raw_size=16,
                                           cache_dir=str(tmp_path / "cache") if cache else None))
    with pytest.raises(OSError) as err:
        src.train[src.train.files.index(str(bad))]
    msg = str(err.value)
    assert str(bad) in msg and "on_bad_image = 'skip'" in msg
    assert "set data.cache_dir" not in msg  # the cache is on by default: the remedy is to skip or fix the file


def test_skip_applies_to_adaptation(tmp_path):
    # Fig 9 / 10's fine-tuning reads its train split the same way as zoo training
    import timm
    import torch

    from zoo_study.zoo.adapt import adapt_model

    bad = _tree(tmp_path / "ds")
    src = make_imagefolder(ImageFolderSpec(root=str(tmp_path / "ds"), raw_size=16, cache_dir=str(tmp_path / "cache"),
                                           on_bad_image="skip"))
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3, channels=(8, 16, 32, 64))
    data_config = {"input_size": [3, 16, 16], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3,
                   "std": [0.5] * 3}
    blob, info = adapt_model(model, data_config, src, {"mode": "finetune", "epochs": 1.0, "lr": 1e-2, "batch_size": 64,
                                                       "seed": 0}, meta={"data_config": data_config}, new_head=True)
    assert blob and info["steps"] >= 1 and np.isfinite(info["final_loss"])
    assert str(bad) in next((tmp_path / "cache").rglob("manifest.json")).read_text()


@pytest.mark.parametrize("n_per_class, batch", [(4, 8), (4, 4), (3, 4)])
def test_cached_batches_match_the_data_loader_when_the_split_divides_into_batches(tmp_path, n_per_class, batch):
    # with drop_last the cache's loader used to drop the last full batch when len(split) % batch == 0: zero
    # batches for a one-batch split, which made zoo training loop forever once it read through the cache
    from zoo_study.data import raw_loader
    from zoo_study.data.cache import cached_split

    _tree(tmp_path / "ds", n=n_per_class).unlink()  # no broken image here
    src = make_imagefolder(ImageFolderSpec(root=str(tmp_path / "ds"), raw_size=16, cache_dir=str(tmp_path / "cache")))
    lazy = [ids.tolist() for _, _, ids in raw_loader(src.train, batch, shuffle=True, seed=1, drop_last=True)]
    cached = [ids.tolist() for _, _, ids in raw_loader(cached_split(src.train), batch, shuffle=True, seed=1,
                                                      drop_last=True)]
    assert cached == lazy and len(lazy) == (2 * n_per_class) // batch
