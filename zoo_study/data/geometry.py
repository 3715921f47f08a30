"""What a model looks at: pixel geometries, and batches that hold one tensor per geometry.

Why a module of its own: the geometry decides whether an input is bit for bit timm's input. timm's eval
transform is: resize the short side to ``floor(img_size / crop_pct)`` with the model's interpolation (PIL,
antialiased), centre-crop ``img_size``, ``ToTensor``, ``Normalize``. Everything before ``ToTensor``
depends only on the :class:`~zoo_study.data.preprocess.EvalGeometry` (resize, crop, interpolation), not
on mean/std, so the decoder (:mod:`zoo_study.data.decode`) renders one uint8 image per distinct geometry
of the models that read a split, and a model's input is that image divided by 255 and normalised
(:meth:`ModelPreprocess.normalize`). No image is upsampled from a smaller copy or resampled twice.

:class:`RawGeometry` is the older lower-storage alternative (one ``raw_size`` square per image, resampled
per model on the fly): it loses accuracy on real photographs and is kept as ``cache_geometry = 'raw'``.

A batch read at several geometries is a :class:`Views` (one tensor per geometry, same samples), which
:class:`ModelPreprocess` reads directly; the decoded-image cache (:mod:`zoo_study.data.cache`) and the
on-the-fly decoder give the same Views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch

from zoo_study.data.preprocess import EvalGeometry, ModelPreprocess

__all__ = ["RawGeometry", "EvalGeometry", "Geometry", "geometry_of", "distinct_geometries", "Views"]

@dataclass(frozen=True)
class RawGeometry:
    """The lazy path's raw square: bicubic short-side resize to ``size`` and centre crop (legacy)."""

    size: int

    @property
    def key(self) -> str:
        return f"raw{self.size}"

    @property
    def crop(self) -> tuple[int, int]:
        return (self.size, self.size)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "raw", "size": self.size}


Geometry = Union[EvalGeometry, RawGeometry]


def geometry_of(config: Mapping[str, Any] | ModelPreprocess | EvalGeometry | RawGeometry) -> Geometry:
    """The cached geometry a model needs, from its timm data config, a ModelPreprocess or a geometry."""
    if isinstance(config, (EvalGeometry, RawGeometry)):
        return config
    pre = config if isinstance(config, ModelPreprocess) else ModelPreprocess.from_data_config(config)
    return pre.geometry


def distinct_geometries(configs: Sequence[Any]) -> list[Geometry]:
    """The distinct geometries of ``configs`` (data configs, ModelPreprocess or geometries), in order."""
    out: list[Geometry] = []
    for c in configs:
        g = geometry_of(c)
        if g not in out:
            out.append(g)
    return out


class Views(Mapping):
    """One batch (or one image) at several cached geometries: the same samples, in the same order.

    A mapping geometry -> uint8 tensor. Tensor methods (``to``, ``pin_memory``, ``unsqueeze``,
    ``expand``, ...) apply to every view; :class:`ModelPreprocess` picks the view at its own geometry
    (:meth:`view_for`). ``len()`` is the number of geometries; :attr:`batch_size` the number of samples.
    """

    def __init__(self, tensors: Mapping[Geometry, torch.Tensor]):
        self._t = dict(tensors)

    def __getitem__(self, g: Geometry) -> torch.Tensor:
        return self._t[g]

    def __iter__(self):
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return "Views(" + ", ".join(f"{g.key}: {tuple(t.shape)}" for g, t in self._t.items()) + ")"

    @property
    def batch_size(self) -> int:
        return int(next(iter(self._t.values())).shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Views":
        return Views({g: fn(t) for g, t in self._t.items()})

    def to(self, *args: Any, **kwargs: Any) -> "Views":
        return self.map(lambda t: t.to(*args, **kwargs))

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(torch.Tensor, name, None)):
            raise AttributeError(name)
        return lambda *a, **k: self.map(lambda t: getattr(t, name)(*a, **k))

    def view_for(self, geometry: Geometry) -> tuple[torch.Tensor, bool]:
        """(tensor, exact): the view at ``geometry``, else a raw-square view to resample (not exact)."""
        if geometry in self._t:
            return self._t[geometry], True
        raws = [g for g in self._t if isinstance(g, RawGeometry)]
        if raws:
            return self._t[max(raws, key=lambda g: g.size)], False
        have = ", ".join(g.key for g in self._t)
        raise ValueError(f"the cached batch has no view at geometry {geometry.key} (it has {have}); pass this "
                         "model's data config to cached_split() together with the others")

    def __getstate__(self):
        return self._t

    def __setstate__(self, state):
        self._t = state
