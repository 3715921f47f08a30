"""One entry point from a data spec to a DataSource, with a per-process cache."""

from __future__ import annotations

from functools import lru_cache

from zoo_study.data.base import DataSource
from zoo_study.data.generated import make_generated
from zoo_study.data.spec import IMAGENET_ENV, DataSpec
from zoo_study.data.imagefolder import ImageFolderSpec, make_imagefolder


@lru_cache(maxsize=4)
def _cached(spec: DataSpec) -> DataSource:
    if spec.kind == "generated":
        return make_generated(spec.generated)
    if spec.kind == "imagefolder":
        return make_imagefolder(ImageFolderSpec(root=spec.resolved_root(), raw_size=spec.raw_size,
                                                cache_dir=spec.cache_dir, cache_geometry=spec.cache_geometry,
                                                cache_workers=spec.cache_workers, on_bad_image=spec.on_bad_image))
    raise ValueError(f"unknown data kind {spec.kind!r}; valid: 'generated', 'imagefolder'")


def load_source(spec: DataSpec) -> DataSource:
    """The dataset for ``spec``; built once per process and reused by later jobs in the same worker.

    An ImageFolder root taken from the environment is resolved before the cache lookup, so changing
    ZOO_STUDY_IMAGENET never returns the dataset of the previous root.
    """
    if spec.kind == "imagefolder" and spec.root is None:
        spec = spec.model_copy(update={"root": spec.resolved_root()})
    return _cached(spec)
