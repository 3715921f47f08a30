"""The embedded default dataset: procedurally drawn shapes, nothing to download.

Why this design: the study needs models that *disagree* in structured ways. Every class is a
(shape, colour, pattern) triple named like "striped red triangle"; the shape is the super-class, so the
classes of one super-class look alike and differ in colour and pattern, and errors cluster inside a
super-class the way ImageNet errors cluster among dog breeds. Neighbouring hues overlap under colour
jitter, shapes are rotated, scaled and moved, and backgrounds carry gradients, a distractor shape and
noise, so small models trained for a few CPU-minutes land well below 100%.

Rendering is vectorised numpy over chunks of images; every random draw comes from generators seeded
by (seed, split, chunk), so the same spec gives the same bytes on every run and machine.
"""

from __future__ import annotations


import numpy as np

from zoo_study.data.base import DataSource, ImageSplit
from zoo_study.data.spec import MAX_COLOURS, MAX_SHAPES, GeneratedSpec

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "crescent", "ellipse")
# (name, hue in [0,1), saturation, value): neighbours in hue are deliberately close
COLOURS = (
    ("red", 0.00, 0.85, 0.90),
    ("orange", 0.07, 0.85, 0.95),
    ("yellow", 0.15, 0.80, 0.95),
    ("green", 0.32, 0.75, 0.75),
    ("teal", 0.46, 0.75, 0.75),
    ("blue", 0.60, 0.80, 0.90),
    ("purple", 0.75, 0.65, 0.80),
    ("pink", 0.90, 0.55, 0.95),
    ("brown", 0.07, 0.70, 0.50),
    ("gray", 0.00, 0.00, 0.65),
)
PATTERNS = ("solid", "striped", "dotted", "checkered", "hollow", "shaded")
_CHUNK = 1024
_SPLIT_CODE = {"train": 1, "eval": 2}


def class_table(spec: GeneratedSpec) -> list[tuple[str, int, int, int]]:
    """Per class: (name, shape index, colour index, pattern index). Classes are grouped by shape.

    ``class_set = "b"`` is a second dataset with other classes: shapes from the other end of the shape
    list (for up to 5 super-classes none of set "a"'s first 5), colours shifted by 3 and another pattern
    order, so its label space shares no class with set "a" of the same size."""
    out = []
    for s in range(spec.num_superclasses):
        for j in range(spec.classes_per_superclass):
            if spec.class_set == "b":
                k, c, p = (s + 5) % len(SHAPES), (j + 3) % len(COLOURS), (2 * j + s + 1) % len(PATTERNS)
            else:
                k, c, p = s, j, (j + s) % len(PATTERNS)
            out.append((f"{PATTERNS[p]} {COLOURS[c][0]} {SHAPES[k]}", k, c, p))
    return out


def superclasses(spec: GeneratedSpec) -> tuple[list[int], list[str]]:
    """(super-class index per class, super-class names): the shape of each class, indexed 0..S-1."""
    table = class_table(spec)
    per = spec.classes_per_superclass
    return [i // per for i in range(len(table))], [table[s * per][0].split()[-1] for s in range(spec.num_superclasses)]


# ------------------------------------------------------------------------------------------ geometry
def _one_shape(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of shape ``k`` (an index into SHAPES) at local coordinates u, v (any shape)."""
    au, av = np.abs(u), np.abs(v)
    if k in (0, 5, 6, 8):
        r = np.sqrt(u * u + v * v)
    if k == 0:  # circle
        return r <= 0.95
    if k == 1:  # square
        return np.maximum(au, av) <= 0.8
    if k == 2:  # triangle
        return (v >= -0.65) & (v <= 0.95 - 1.85 * au)
    if k == 3:  # diamond
        return au + av <= 1.0
    if k == 4:  # cross
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if k == 5:  # ring
        return (r <= 0.95) & (r >= 0.55)
    if k == 6:  # star (angle in float64, as the other per-pixel transcendental calls, e.g. the stripes)
        th = np.arctan2(v.astype(np.float64), u.astype(np.float64))
        return r <= 0.42 + 0.55 * ((np.cos(5 * th) + 1) / 2) ** 2
    if k == 7:  # hexagon
        return np.maximum(av, au * 0.866 + av * 0.5) <= 0.85
    if k == 8:  # crescent
        return (r <= 0.95) & ((u - 0.45) ** 2 + v * v >= 0.7**2)
    if k == 9:  # ellipse
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 0.9
    raise ValueError(f"unknown shape index {k}; valid: 0..{len(SHAPES) - 1}")


def _shape_mask(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of each image's shape at local coordinates u, v ([n, H, W]); ``shape`` is [n].

    Each image evaluates only its own shape's formula (grouped by shape, so still vectorised): drawing
    all ten masks for every image and selecting one afterwards cost most of the render time.
    """
    out = np.zeros(u.shape, dtype=bool)
    for k in np.unique(shape):
        sel = np.flatnonzero(shape == k)
        out[sel] = _one_shape(int(k), u[sel], v[sel])
    return out


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs [n], output [n, 3] in [0, 1]."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], axis=0
    )
    return table[i, np.arange(len(i))]


def _pattern_tone(pattern: np.ndarray, u: np.ndarray, v: np.ndarray, freq: np.ndarray, phase: np.ndarray,
                  inside: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: (tone in [0,1] where 1 = the class colour, 0 = its dark shade; visible mask).

    Like the shape masks, each pattern is computed only for the images that carry it.
    """
    tone = np.ones(u.shape, dtype=np.float32)
    visible = inside.copy()
    for k in np.unique(pattern):
        sel = np.flatnonzero(pattern == k)
        us, vs = u[sel], v[sel]
        f = freq[sel][:, None, None]
        ph = phase[sel][:, None, None]
        if k == 1:  # striped
            tone[sel] = np.sin(f * us + ph) > 0
        elif k == 2:  # dotted
            tone[sel] = (np.mod(f * us / np.pi + ph, 2.0) - 1) ** 2 + (np.mod(f * vs / np.pi + ph, 2.0) - 1) ** 2 < 0.45
        elif k == 3:  # checkered
            tone[sel] = (np.floor(f * us / np.pi + ph) + np.floor(f * vs / np.pi + ph)) % 2 == 0
        elif k == 4:  # hollow: only the rim of the shape is drawn
            visible[sel] = inside[sel] & ~inner[sel]
        elif k == 5:  # shaded
            tone[sel] = np.clip(0.5 + 0.5 * (us + vs) / 1.4, 0, 1)
    return tone, visible


# ------------------------------------------------------------------------------------------- render
def _render(spec: GeneratedSpec, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render images for ``labels`` (one chunk) as uint8 [n, 3, S, S]."""
    table = class_table(spec)
    n, size, d = len(labels), spec.image_size, spec.difficulty
    shape = np.array([table[c][1] for c in labels])
    colour = np.array([table[c][2] for c in labels])
    pattern = np.array([table[c][3] for c in labels])

    # pose: centre, scale, rotation
    cx, cy = rng.uniform(-0.3, 0.3, n) * (0.5 + 0.5 * d), rng.uniform(-0.3, 0.3, n) * (0.5 + 0.5 * d)
    scale = rng.uniform(0.45, 0.75, n)
    rot = rng.uniform(-0.35, 0.35, n) * d
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def col(a: np.ndarray) -> np.ndarray:  # per-image float32 values, broadcast over pixels
        return np.asarray(a, dtype=np.float32)[:, None, None]

    def local(cx_, cy_, sc, rt):
        # float32 throughout: the pixel arrays dominate the render time and need no more precision
        dx, dy = xx[None] - col(cx_), yy[None] - col(cy_)
        c, s, inv = col(np.cos(rt)), col(np.sin(rt)), col(1.0 / sc)
        return (c * dx + s * dy) * inv, (c * dy - s * dx) * inv

    u, v = local(cx, cy, scale, rot)
    inside = _shape_mask(shape, u, v)
    # the inner outline is only drawn by hollow classes
    hollow = pattern == PATTERNS.index("hollow")
    inner = np.zeros_like(inside)
    if hollow.any():
        inner[hollow] = _shape_mask(shape[hollow], u[hollow] * 1.6, v[hollow] * 1.6)

    # colours: class hue with jitter (neighbouring hues overlap), saturation/value jitter
    base = np.array([COLOURS[j][1:] for j in colour], dtype=np.float64)
    hue = base[:, 0] + rng.normal(0, 0.03 * d, n)
    sat = np.clip(base[:, 1] + rng.normal(0, 0.1 * d, n), 0, 1)
    val = np.clip(base[:, 2] + rng.normal(0, 0.1 * d, n), 0.15, 1)
    fg = _hsv_to_rgb(hue, sat, val).astype(np.float32)
    dark = fg * rng.uniform(0.25, 0.55, (n, 1)).astype(np.float32)

    freq = rng.uniform(5.0, 9.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    tone, visible = _pattern_tone(pattern, u, v, freq, phase, inside, inner)

    # background: a gradient between two muted colours, plus a distractor shape
    bg_a = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.4, n), rng.uniform(0.2, 0.8, n)).astype(np.float32)
    bg_b = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.4, n), rng.uniform(0.2, 0.8, n)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi, n)
    t = (col(np.cos(ang)) * xx[None] + col(np.sin(ang)) * yy[None] + 1) * np.float32(0.5)
    img = bg_a[:, :, None, None] * (1 - t[:, None]) + bg_b[:, :, None, None] * t[:, None]

    has_distractor = rng.uniform(0, 1, n) < 0.6 * min(1.0, d)
    du, dv = local(rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n), rng.uniform(0.15, 0.3, n), rng.uniform(-3, 3, n))
    d_inside = _shape_mask(rng.integers(0, len(SHAPES), n), du, dv) & has_distractor[:, None, None]
    d_col = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.3, 0.9, n), rng.uniform(0.3, 1.0, n)).astype(np.float32)
    img = np.where(d_inside[:, None], d_col[:, :, None, None], img)

    shape_px = dark[:, :, None, None] + (fg - dark)[:, :, None, None] * tone[:, None]
    img = np.where(visible[:, None], shape_px, img)

    # global brightness / contrast and pixel noise
    img *= rng.uniform(1 - 0.2 * d, 1 + 0.1 * d, (n, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(0.05 * d)
    img += noise
    if spec.domain != "photo":  # after every draw of the photo look, so "photo" bytes never change
        img = _restyle(spec.domain, img, shape_px, visible, inside, rng)
    np.clip(img, 0, 1, out=img)
    img *= 255
    img += 0.5
    return img.astype(np.uint8)


def _restyle(domain: str, img: np.ndarray, shape_px: np.ndarray, visible: np.ndarray, inside: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Another rendering of the same classes (Fig 10's other domain): the shape, its colour and pattern are
    kept, the look around them changes.

    - ``sketch``: a flat near-white page without gradient, distractor or noise, the shape with a dark outline;
    - ``noisy``: contrast halved towards mid-grey and strong pixel noise (a sensor at night)."""
    if domain == "sketch":
        out = np.full_like(img, 0.96)
        out = np.where(visible[:, None], shape_px, out)
        pad = np.pad(inside, ((0, 0), (1, 1), (1, 1)))
        core = pad[:, 1:-1, 1:-1] & pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:]
        edge = inside & ~core
        return np.where(edge[:, None], np.float32(0.08), out).astype(np.float32)
    if domain == "noisy":
        out = np.float32(0.5) + (img - np.float32(0.5)) * np.float32(0.5)
        return out + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.18)
    raise ValueError(f"unknown domain {domain!r}; valid: photo, sketch, noisy")


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels with every class count within one of the others, in random order."""
    labels = np.arange(n) % num_classes
    return rng.permutation(labels)


def render_split(spec: GeneratedSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, S, S], labels int64 [n]) for 'train' or 'eval'; deterministic."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_SPLIT_CODE)}")
    n = spec.n_train if split == "train" else spec.n_eval
    code = _SPLIT_CODE[split]
    labels = _balanced_labels(n, spec.num_classes, np.random.default_rng([spec.seed, code, 0]))
    images = np.empty((n, 3, spec.image_size, spec.image_size), dtype=np.uint8)
    for ci, start in enumerate(range(0, n, _CHUNK)):
        stop = min(n, start + _CHUNK)
        rng = np.random.default_rng([spec.seed, code, ci + 1])
        images[start:stop] = _render(spec, labels[start:stop], rng)
    return images, labels.astype(np.int64)


def make_generated(spec: GeneratedSpec | None = None) -> DataSource:
    """Build the generated dataset (train and eval splits) in memory."""
    spec = spec or GeneratedSpec()
    table = class_table(spec)
    names = [row[0] for row in table]
    splits = {}
    for split in ("train", "eval"):
        images, labels = render_split(spec, split)
        splits[split] = ImageSplit(
            labels=labels,
            sample_ids=np.arange(len(labels), dtype=np.int64),
            class_names=names,
            raw_size=spec.image_size,
            images=images,
            name=f"generated/{split}",
        )
    return DataSource(
        name="generated",
        train=splits["train"],
        eval=splits["eval"],
        class_names=names,
        superclass_of=superclasses(spec)[0],
        superclass_names=superclasses(spec)[1],
        meta={"spec": spec.__dict__.copy()},
    )


assert len(SHAPES) == MAX_SHAPES and len(COLOURS) == MAX_COLOURS  # the spec's bounds match the palette
