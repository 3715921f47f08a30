"""A tiny ImageNet-style JPEG tree for tests: WordNet-id class folders and the odd files real ImageNet has.

Why: ImageNet's val split holds grayscale and CMYK JPEGs and a PNG named ``.JPEG``, in many sizes; each of
them has broken a preprocessing path somewhere. Images are smooth random fields with shapes and a little
noise, so JPEG compression and resampling behave as on photographs (a solid colour hides resampling bugs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (width, height): landscape, portrait, square, one smaller than a 224 crop (upsampled), one tall and thin
SIZES = [(320, 240), (200, 300), (260, 260), (150, 190), (120, 330)]


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like RGB image: a smooth random field, a few ellipses, a little noise."""
    low = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(1.2))
    noise = rng.normal(0, 5, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def imagenet_wnids(indices: list[int]) -> list[str]:
    """The WordNet ids of ImageNet-1k classes ``indices`` (timm's ImageNetInfo: files inside timm)."""
    import zoo_study  # noqa: F401  (torchvision compat before timm)
    from timm.data import ImageNetInfo

    names = list(ImageNetInfo().label_names())
    return [names[i] for i in indices]


def write_imagenet_tree(root: Path, wnids: list[str], n_train: int = 2, n_val: int = 4, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/<wnid>_<i>.JPEG`` in mixed sizes; in val/ of the first class: a grayscale
    JPEG, a CMYK JPEG and a PNG named .JPEG (when n_val >= 3)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(wnids):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = SIZES[(i + c) % len(SIZES)]
                im, path = photo(rng, w, h), d / f"{wnid}_{i}.JPEG"
                odd = i if split == "val" and c == 0 else -1
                if odd == 0:
                    im.convert("L").save(path, format="JPEG", quality=90)
                elif odd == 1:
                    im.convert("CMYK").save(path, format="JPEG", quality=90)
                elif odd == 2:
                    im.save(path, format="PNG")  # a PNG behind a .JPEG name, as in ImageNet's train split
                else:
                    im.save(path, format="JPEG", quality=90)
    return root
