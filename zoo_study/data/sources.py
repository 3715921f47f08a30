"""One entry point from a data spec to a DataSource, with a per-process cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

from zoo_study.data.base import DataSource
from zoo_study.data.generated import GeneratedSpec, make_generated
from zoo_study.data.imagefolder import ImageFolderSpec, make_imagefolder

IMAGENET_ENV = "ZOO_STUDY_IMAGENET"


@dataclass(frozen=True)
class DataSpec:
    """Which dataset to use. ``kind='generated'`` needs nothing on disk; ``'imagefolder'`` needs ``root``
    (or the ZOO_STUDY_IMAGENET environment variable)."""

    kind: Literal["generated", "imagefolder"] = "generated"
    generated: GeneratedSpec = field(default_factory=GeneratedSpec)
    root: str | None = None
    raw_size: int = 256

    def resolved_root(self) -> str:
        root = self.root or os.environ.get(IMAGENET_ENV)
        if not root:
            raise FileNotFoundError(
                f"data.kind='imagefolder' needs a dataset root: set data.root in the config or {IMAGENET_ENV}"
            )
        return root


@lru_cache(maxsize=4)
def _cached(spec: DataSpec) -> DataSource:
    if spec.kind == "generated":
        return make_generated(spec.generated)
    if spec.kind == "imagefolder":
        return make_imagefolder(ImageFolderSpec(root=spec.resolved_root(), raw_size=spec.raw_size))
    raise ValueError(f"unknown data kind {spec.kind!r}; valid: 'generated', 'imagefolder'")


def load_source(spec: DataSpec) -> DataSource:
    """The dataset for ``spec``; built once per process and reused by later jobs in the same worker.

    An ImageFolder root taken from the environment is resolved before the cache lookup, so changing
    ZOO_STUDY_IMAGENET never returns the dataset of the previous root.
    """
    if spec.kind == "imagefolder" and spec.root is None:
        spec = replace(spec, root=spec.resolved_root())
    return _cached(spec)
