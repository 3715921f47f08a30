"""One entry point from a data spec to a DataSource, with a per-process cache."""

from __future__ import annotations

from functools import lru_cache

from zoo_study.data.base import DataSource
from zoo_study.data.generated import make_generated
from zoo_study.data.spec import DataSpec, resolve_data_paths
from zoo_study.data.imagefolder import ImageFolderSpec, make_imagefolder


@lru_cache(maxsize=4)
def _cached(spec: DataSpec) -> DataSource:
    if spec.kind == "generated":
        return make_generated(spec.generated)
    if spec.kind == "imagefolder":
        root, cache_dir = resolve_data_paths(spec)
        return make_imagefolder(ImageFolderSpec(root=root, raw_size=spec.raw_size, cache_dir=cache_dir,
                                                cache_geometry=spec.cache_geometry, cache_workers=spec.cache_workers,
                                                on_bad_image=spec.on_bad_image, loader_workers=spec.loader_workers))
    raise ValueError(f"unknown data kind {spec.kind!r}; valid: 'generated', 'imagefolder'")


def load_source(spec: DataSpec) -> DataSource:
    """The dataset for ``spec``; built once per process and reused by later jobs in the same worker.

    An ImageFolder root and cache folder taken from the environment are resolved before the lookup, so
    changing ZOO_STUDY_IMAGENET or ZOO_STUDY_CACHE never returns the dataset of the previous one.
    """
    if spec.kind == "imagefolder":
        root, cache_dir = resolve_data_paths(spec)
        spec = spec.model_copy(update={"root": root, "cache_dir": cache_dir or "none"})
    return _cached(spec)
