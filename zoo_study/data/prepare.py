"""The CPU step before any GPU task: index an ImageFolder root once and build its decoded-image cache.

Why: built inside GPU tasks, the cache forks a decoding process per CPU after CUDA init while sibling
GPU tasks wait on its lock, and every task re-walks the root (~1.33M entries for ImageNet) and re-stats
the files of its splits for the cache key. Run once on the driver instead, after the zoo stage (which
gives every model's data config) and before predict / transfer, it leaves each task a file index to read
and a cache that already holds every geometry of every model; a task then only opens memory maps.

Tasks still build what is missing themselves (under the same lock), so a worker node whose node-local
cache folder the driver cannot reach, or a library user who skips this step, gets the same results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from zoo_study.data.base import DataSource, ImageSplit
from zoo_study.data.cache import CacheSpaceError, build_cache
from zoo_study.data.geometry import RawGeometry, distinct_geometries
from zoo_study.data.imagefolder import ImageFolderSpec, make_imagefolder
from zoo_study.data.spec import DataSpec, resolve_data_paths
from zoo_study.data.subsets import stratified_indices

__all__ = ["SubsetSpec", "PrepareReport", "prepare_images", "index_source"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubsetSpec:
    """A stratified subset of the train split, as a transfer job draws it (zoo_study.transfer.inputs)."""

    per_class: int | None = None
    fraction: float | None = None
    seed: int = 0

    def of(self, train: ImageSplit) -> ImageSplit:
        """The same rows, in the same order, as :func:`zoo_study.transfer.inputs.transfer_set`."""
        if self.per_class is not None:
            idx = stratified_indices(train.labels, per_class=self.per_class, seed=self.seed)
        else:
            idx = stratified_indices(train.labels, fraction=self.fraction, seed=self.seed)
        return train.subset(idx)


@dataclass(frozen=True)
class PrepareReport:
    """What the step did: images per split cached, the geometries and the seconds it took."""

    n_eval: int
    n_train: dict[SubsetSpec, int]
    geometries: list[str]
    seconds: float


def index_source(spec: DataSpec) -> DataSource:
    """The ImageFolder source of ``spec`` with its file index rebuilt from a full walk (and written
    beside the cache), so tasks of this run read a current index instead of walking the root."""
    root, cache_dir = resolve_data_paths(spec)
    return make_imagefolder(ImageFolderSpec(root=root, raw_size=spec.raw_size, cache_dir=cache_dir,
                                            cache_geometry=spec.cache_geometry, cache_workers=spec.cache_workers,
                                            on_bad_image=spec.on_bad_image, loader_workers=spec.loader_workers,
                                            index="refresh"))


def prepare_images(spec: DataSpec, data_configs: Sequence[Any], subsets: Sequence[SubsetSpec] = ()) -> PrepareReport | None:
    """Index ``spec``'s root and cache its eval split and each train subset at every distinct geometry of
    ``data_configs`` (timm data configs or catalog rows of the study's models). None when there is
    nothing to do (generated data, or the cache is off: then tasks decode on the fly)."""
    if spec.kind != "imagefolder" or not spec.cache_enabled:
        return None
    t0 = time.monotonic()
    source = index_source(spec)
    geoms = distinct_geometries(list(data_configs))
    if spec.cache_geometry == "raw" or not geoms:
        geoms = [RawGeometry(spec.raw_size)]
    n_train = {}
    try:
        build_cache(source.eval, geoms, source.eval.cache)
        for s in dict.fromkeys(subsets):
            sub = s.of(source.train)
            build_cache(sub, geoms, sub.cache)
            n_train[s] = len(sub)
    except CacheSpaceError as err:  # tasks decode on the fly instead: the same pixels, more CPU per task
        log.warning("the image cache is not built: %s", err)
    seconds = time.monotonic() - t0
    log.info("images ready for %s: eval %d, train subsets %s, geometries %s (%.1f s)", source.name, len(source.eval),
             list(n_train.values()), ", ".join(g.key for g in geoms), seconds)
    return PrepareReport(len(source.eval), n_train, [g.key for g in geoms], seconds)
