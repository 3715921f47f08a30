"""Tests of per-model preprocessing (ModelPreprocess) and transfer augmentation (TransferAugment).

Why: complementarity and transfer compare models on *the same picture*, each seen through its own
timm eval transform. If the resize/crop geometry or the normalisation drifts from timm's, every
pretrained model is scored on inputs it was never evaluated on. The geometry is checked by hand on
tiny ramps (resize the short side to floor(size / crop_pct), centre crop with torchvision's rounding)
and against timm's own eval transform; the normalisation on constant images.
"""

from __future__ import annotations


import pytest
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
from timm.data import create_transform

from zoo_study.data import ModelPreprocess, TransferAugment
from zoo_study.data.preprocess import preprocess_from_row, same_batch_for_models

ZERO_ONE = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # identity normalisation: see raw geometry


def ramp(size: int, step: int = 10, batch: int = 1) -> torch.Tensor:
    """uint8 [B, 3, size, size]: pixel (r, c) = step * c in every channel (a horizontal ramp)."""
    row = torch.arange(size, dtype=torch.int64) * step
    return row.view(1, 1, 1, size).expand(batch, 3, size, size).to(torch.uint8).contiguous()


def columns(x: torch.Tensor) -> list[float]:
    """First row of channel 0, back in raw 0..255 units (for identity normalisation)."""
    return [round(v * 255, 3) for v in x[0, 0, 0].tolist()]


# ------------------------------------------------------------------------------------ normalisation
def test_constant_image_normalises_exactly():
    raw = torch.full((2, 3, 10, 10), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    pre = ModelPreprocess(input_size=(3, 8, 8), crop_pct=0.8, mean=(0.5, 0.4, 0.1), std=(0.25, 0.5, 0.2))
    out = pre(raw)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    expected = [(0.2 - 0.5) / 0.25, (0.2 - 0.4) / 0.5, (0.2 - 0.1) / 0.2]  # -1.2, -0.4, 0.5
    for c, e in enumerate(expected):
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], e), atol=1e-6), (c, e)


def test_float_input_in_unit_range_is_taken_as_is():
    raw = torch.full((1, 3, 4, 4), 0.75)
    out = ModelPreprocess(input_size=(3, 4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(raw)
    assert torch.allclose(out, torch.full_like(out, 0.5))


# --------------------------------------------------------------------------------------- geometry
def test_no_resize_when_scale_equals_raw_and_even_centre_crop():
    # input 6, crop_pct 0.75 -> scale floor(6 / 0.75) = 8 = raw size: no resize; crop offset (8-6)/2 = 1
    pre = ModelPreprocess(input_size=(3, 6, 6), crop_pct=0.75, **ZERO_ONE)
    assert pre.resize_size == (8, 8)
    out = pre(ramp(8))
    assert out.shape == (1, 3, 6, 6)
    assert columns(out) == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize(
    "raw_size, size, crop_pct, offset",
    [
        (8, 5, 0.625, 2),  # scale floor(5/.625) = 8, diff 3: round(1.5) = 2 (torchvision), not 3 // 2 = 1
        (10, 5, 0.5, 2),  # diff 5: round(2.5) = 2 (Python rounds half to even, as torchvision does)
        (13, 6, 0.46, 4),  # floor(6/.46) = 13, diff 7: round(3.5) = 4 (half to even rounds up here)
    ],
)
def test_centre_crop_offset_follows_torchvision_rounding(raw_size, size, crop_pct, offset):
    pre = ModelPreprocess(input_size=(3, size, size), crop_pct=crop_pct, **ZERO_ONE)
    assert pre.resize_size == (raw_size, raw_size)  # no resize: the crop alone is visible
    out = pre(ramp(raw_size))
    assert columns(out) == [10 * (offset + i) for i in range(size)]
    # rows are cropped with the same offset: transpose the ramp
    rows = pre(ramp(raw_size).transpose(-1, -2).contiguous())
    assert [round(v * 255, 3) for v in rows[0, 0, :, 0].tolist()] == [10 * (offset + i) for i in range(size)]


def test_bilinear_upscale_by_hand():
    # raw ramp 0, 40, 80, 120 upscaled 4 -> 8 (align_corners=False): output i samples source x = i/2 - 1/4,
    # clamped to [0, 3], so the values are 40 * clamp(i/2 - 1/4): 0, 10, 30, 50, 70, 90, 110, 120
    pre = ModelPreprocess(input_size=(3, 8, 8), crop_pct=1.0, interpolation="bilinear", **ZERO_ONE)
    assert columns(pre(ramp(4, step=40))) == [0, 10, 30, 50, 70, 90, 110, 120]


def test_bilinear_downscale_is_antialiased_by_hand():
    # 8 -> 4 with antialias (as torchvision's Resize on tensors and PIL): output 1 covers source pixels
    # 1..4 with triangle weights 1/8, 3/8, 3/8, 1/8 -> 10 * (1 + 6 + 9 + 4) / 8 = 25;
    # output 0 loses pixel -1: weights .75, .75, .25 on pixels 0..2 -> 10 * (0 + .75 + .5) / 1.75
    pre = ModelPreprocess(input_size=(3, 4, 4), crop_pct=1.0, interpolation="bilinear", **ZERO_ONE)
    out = columns(pre(ramp(8)))
    assert out[1] == pytest.approx(25.0, abs=1e-3) and out[2] == pytest.approx(45.0, abs=1e-3)
    assert out[0] == pytest.approx(10 * 1.25 / 1.75, abs=1e-3)


def test_resize_then_crop_geometry_by_hand():
    # raw 16 ramp (step 8), input 6, crop_pct 0.75: resize short side to floor(6/.75) = 8 (factor 2, so
    # output j is centred on source 2j + 0.5, value 8 * (2j + 0.5) away from the border), crop offset 1
    pre = ModelPreprocess(input_size=(3, 6, 6), crop_pct=0.75, **ZERO_ONE)
    out = columns(pre(ramp(16, step=8)))
    assert out == pytest.approx([8 * (2 * j + 0.5) for j in range(1, 7)], abs=1e-3)


TIMM_CASES = [
    # raw, input_size, crop_pct, interpolation
    (32, (3, 32, 32), 1.0, "bilinear"),
    (32, (3, 32, 32), 0.9, "bilinear"),
    (35, (3, 32, 32), 0.9, "bilinear"),
    (37, (3, 30, 30), 0.9, "bilinear"),
    (40, (3, 28, 28), 0.875, "bicubic"),
    (64, (3, 24, 24), 0.95, "bicubic"),
    (33, (3, 24, 32), 0.95, "bilinear"),  # non-square target: short side covers the larger scale side
    (33, (3, 32, 24), 0.8, "bilinear"),
    (20, (3, 30, 30), 0.9, "nearest"),
]


@pytest.mark.parametrize("raw_size, input_size, crop_pct, interp", TIMM_CASES)
def test_matches_timm_eval_transform(raw_size, input_size, crop_pct, interp):
    """The batched tensor path equals timm's eval transform (torchvision Resize + CenterCrop + Normalize)
    applied image by image. timm on float tensors does not clamp bicubic overshoot while the PIL path
    (and ModelPreprocess) does, so the reference is clamped to [0, 1] before normalising."""
    torch.manual_seed(raw_size)
    raw = torch.randint(0, 256, (3, 3, raw_size, raw_size), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    tf = create_transform(input_size=input_size, crop_pct=crop_pct, interpolation=interp, mean=(0, 0, 0),
                          std=(1, 1, 1), is_training=False)
    ref = torch.stack([tf(r.float() / 255) for r in raw]).clamp(0, 1)
    ref = (ref - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = ModelPreprocess(input_size=input_size, crop_pct=crop_pct, interpolation=interp, mean=mean, std=std)(raw)
    assert out.shape == ref.shape == (3, *input_size)
    assert torch.allclose(out, ref, atol=2e-5)


def test_two_models_get_different_inputs_from_one_batch():
    raw = ramp(12, step=20, batch=2)
    a = ModelPreprocess(input_size=(3, 12, 12), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    b = ModelPreprocess(input_size=(3, 8, 8), crop_pct=0.8, interpolation="bicubic")
    xa, xb = same_batch_for_models(raw, [a, b])
    assert xa.shape == (2, 3, 12, 12) and xb.shape == (2, 3, 8, 8)
    # model a: no resize, (v/255 - .5) / .5 with v = 20 * column
    assert xa[0, 0, 0, :3].tolist() == pytest.approx([-1.0, (20 / 255 - 0.5) / 0.5, (40 / 255 - 0.5) / 0.5], abs=1e-6)
    # model b: floor(8 / .8) = 10, bicubic resize 12 -> 10, crop offset 1, ImageNet mean/std per channel
    assert not torch.equal(xb[:, 0], xb[:, 2])  # different channel normalisation of the same grey ramp
    ref = ModelPreprocess(input_size=(3, 10, 10), crop_pct=1.0, interpolation="bicubic", **ZERO_ONE)(raw)[..., 1:9, 1:9]
    mean = torch.tensor(b.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose(xb, (ref - mean) / std, atol=1e-6)


def test_from_data_config_of_a_timm_model_and_catalog_row():
    from timm.data import resolve_data_config

    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3, channels=(4, 8, 8, 8))
    cfg = resolve_data_config({}, model=model)
    pre = ModelPreprocess.from_data_config(cfg)
    assert pre.input_size == tuple(cfg["input_size"]) and pre.crop_pct == cfg["crop_pct"]
    assert pre.interpolation == cfg["interpolation"] and pre.mean == tuple(cfg["mean"])
    row = {"input_size": [3, 28, 28], "crop_pct": 0.9, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    pre = preprocess_from_row(row)
    assert pre.as_dict() == {**row, "input_size": [3, 28, 28]}
    # timm's training-only interpolation names fall back sensibly; a missing crop_pct means no crop
    assert ModelPreprocess.from_data_config({"input_size": (3, 8, 8), "interpolation": "random"}).interpolation == "bilinear"
    assert ModelPreprocess.from_data_config({"input_size": (3, 8, 8), "crop_pct": None}).crop_pct == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_size=(3, 8, 8), interpolation="lanczos"), "'lanczos'"),
        (dict(input_size=(3, 8, 8), crop_pct=0.0), "got 0.0"),
        (dict(input_size=(3, 8, 8), crop_pct=1.2), "got 1.2"),
        (dict(input_size=(1, 8, 8)), "\\(1, 8, 8\\)"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelPreprocess(**kwargs)


def test_bad_raw_batch_raises():
    pre = ModelPreprocess(input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="square"):
        pre(torch.zeros(1, 3, 8, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="\\[B, 3, H, W\\]"):
        pre(torch.zeros(3, 8, 8, dtype=torch.uint8))


# ------------------------------------------------------------------------------- TransferAugment
def test_augment_is_deterministic_given_a_generator_and_keeps_dtype_shape():
    torch.manual_seed(0)
    raw = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    aug = TransferAugment()
    a = aug(raw, torch.Generator().manual_seed(7))
    b = aug(raw.clone(), torch.Generator().manual_seed(7))
    c = aug(raw, torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and a.shape == raw.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, raw)


def test_augment_components():
    torch.manual_seed(1)
    raw = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    gen = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(TransferAugment(flip_p=0, color_p=0, gray_p=0)(raw, gen()), raw)
    assert torch.equal(TransferAugment(flip_p=1, color_p=0, gray_p=0)(raw, gen()), raw.flip(-1))
    gray = TransferAugment(flip_p=0, color_p=0, gray_p=1)(raw, gen())
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    # luma weights .299/.587/.114 on one pixel, by hand
    px = raw[0, :, 0, 0].double()
    assert int(gray[0, 0, 0, 0]) == round(float((0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])))
    # strength 0: colour distortion changes nothing
    assert torch.equal(TransferAugment(flip_p=0, color_p=1, gray_p=0, strength=0)(raw, gen()), raw)


def test_augment_rejects_float_batches():
    with pytest.raises(TypeError, match="uint8"):
        TransferAugment()(torch.zeros(1, 3, 4, 4))


# ----------------------------------------------------- ImageFolder data read as timm's eval transform reads it
# Real timm data configs (no weights): 224/0.875 bilinear (ImageNet mean/std), 256/0.9 bicubic with mean 0 and
# std 1, 288/1.0 bicubic. The ImageNet-style tree has grayscale, CMYK, a PNG named .JPEG and images smaller than
# the crop; every model's input must be timm's create_transform output bit for bit, with or without the cache,
# decoded in DataLoader worker processes.
REAL_ARCHS = ["resnet18.tv_in1k", "mobilevit_xxs.cvnets_in1k", "efficientvit_b1.r288_in1k"]


def _timm_config(name: str) -> dict:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    return dict(resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict()))


def _imagenet_source(tmp_path, cache: bool):
    from helpers.imagenet_tree import imagenet_wnids, write_imagenet_tree
    from zoo_study.data import ImageFolderSpec, make_imagefolder

    root = write_imagenet_tree(tmp_path / "imagenet", imagenet_wnids([3, 500]), n_train=1, n_val=4)
    return make_imagefolder(ImageFolderSpec(root=str(root), cache_dir=str(tmp_path / "cache") if cache else None,
                                            cache_workers=1, loader_workers=2))


@pytest.mark.parametrize("cache", [False, True], ids=["on-the-fly", "cache"])
def test_imagefolder_inputs_equal_timm_create_transform_for_real_configs(tmp_path, cache):
    from PIL import Image

    from zoo_study.data import raw_loader
    from zoo_study.data.cache import cached_split

    configs = [_timm_config(n) for n in REAL_ARCHS]
    assert len({(c["input_size"], c["crop_pct"], c["interpolation"], c["mean"]) for c in configs}) == 3
    src = _imagenet_source(tmp_path, cache)
    split = cached_split(src.eval, configs)
    loader = raw_loader(split, batch_size=3)
    assert cache or loader.num_workers == 2  # decoded in worker processes, not in this thread
    batches = list(loader)
    for cfg in configs:
        pre = ModelPreprocess.from_data_config(cfg)
        ours = torch.cat([pre(b) for b, _, _ in batches])
        want = torch.stack([create_transform(**cfg)(Image.open(f).convert("RGB")) for f in src.eval.files])
        assert ours.shape == want.shape and torch.equal(ours, want), cfg
