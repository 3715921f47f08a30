"""Which dataset a study uses: the typed specs shared by the study config and the data loaders.

Why here and torch-free: the study config's ``[data]`` section *is* a :class:`DataSpec` (one shape per
concept), validated when the study is loaded; the same object, dumped into a job spec and validated
again in the worker, selects the dataset there. Keeping it apart from the loaders lets the CLI plan a
study without importing torch.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GeneratedSpec", "DataSpec", "IMAGENET_ENV", "MAX_SHAPES", "MAX_COLOURS"]

IMAGENET_ENV = "ZOO_STUDY_IMAGENET"
MAX_SHAPES = 10  # len(generated.SHAPES)
MAX_COLOURS = 10  # len(generated.COLOURS)


class GeneratedSpec(BaseModel):
    """Size and seed of the generated dataset. ``difficulty`` scales noise, jitter and clutter."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    seed: int = Field(0, ge=0)  # numpy's SeedSequence only takes non-negative entropy
    num_superclasses: int = Field(10, ge=1, le=MAX_SHAPES)
    classes_per_superclass: int = Field(10, ge=1, le=MAX_COLOURS)
    image_size: int = Field(32, ge=8, le=256)
    n_train: int = Field(16000, ge=1)
    n_eval: int = Field(4000, ge=1)
    difficulty: float = Field(0.4, ge=0)
    # the label space: "a" (the default classes) or "b", a second dataset of other classes (other shapes as
    # super-classes, other colour / pattern combinations): the embedded stand-in for "another dataset" (Fig 9)
    class_set: Literal["a", "b"] = "a"
    # the rendering style, classes unchanged (Fig 10's other domain): "photo" (the default look), "sketch"
    # (flat white background, no clutter, dark outline), "noisy" (low contrast, strong pixel noise)
    domain: Literal["photo", "sketch", "noisy"] = "photo"

    @field_validator("difficulty")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"difficulty must be a finite number >= 0, got {v}")
        return v

    @field_validator("seed", "num_superclasses", "classes_per_superclass", "image_size", "n_train", "n_eval",
                     mode="before")
    @classmethod
    def _integer(cls, v, info):
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) or isinstance(v, str):
            raise ValueError(f"{info.field_name} must be an integer, got {v!r}")
        return v

    @property
    def num_classes(self) -> int:
        return self.num_superclasses * self.classes_per_superclass


class DataSpec(BaseModel):
    """Which dataset to use. ``kind='generated'`` needs nothing on disk; ``'imagefolder'`` needs ``root``
    (or the ZOO_STUDY_IMAGENET environment variable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["generated", "imagefolder"] = "generated"
    root: str | None = None  # imagefolder: dataset root; falls back to $ZOO_STUDY_IMAGENET
    raw_size: int = Field(256, ge=8)
    generated: GeneratedSpec = GeneratedSpec()
    # ImageFolder decoded-image cache (zoo_study.data.cache): a node-local folder; None = decode lazily
    cache_dir: str | None = None
    # "model": one uint8 array per distinct timm eval geometry of the zoo (timm's eval transform exactly);
    # "raw": the lazy path's raw_size squares (the same pixels as without a cache, only faster)
    cache_geometry: Literal["model", "raw"] = "model"
    cache_workers: int = Field(0, ge=0)  # decoding processes for a cache build; 0 = one per CPU
    on_bad_image: Literal["skip", "fail"] = "fail"  # unreadable image at cache build: drop and count, or fail

    # settings that change only speed, not results: kept out of job ids (see job_dict / runtime_dict)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("cache_dir", "cache_workers")

    def resolved_root(self) -> str:
        root = self.root or os.environ.get(IMAGENET_ENV)
        if not root:
            raise FileNotFoundError(
                f"data.kind='imagefolder' needs a dataset root: set data.root in the config or {IMAGENET_ENV}"
            )
        return root

    def job_dict(self) -> dict:
        """What a job spec holds (and its id hashes): what changes the pixels and the samples.

        Generated data carries no root; the cache location and its worker count change only speed
        (:meth:`runtime_dict`); the cache geometry and the bad-image policy enter only when a cache is
        used, so studies without one keep their ids."""
        d = self.model_dump(mode="json", exclude={*self.RUNTIME_FIELDS, "cache_geometry", "on_bad_image"})
        if self.kind == "generated":
            d.pop("root", None)
        gen = d.get("generated", {})
        for key, default in (("class_set", "a"), ("domain", "photo")):  # added later: ids kept at defaults
            if gen.get(key) == default:
                gen.pop(key)
        if self.kind == "imagefolder" and self.cache_dir is not None:
            d["cache_geometry"] = self.cache_geometry
        if self.kind == "imagefolder" and (self.cache_dir is not None or self.on_bad_image != "fail"):
            d["on_bad_image"] = self.on_bad_image
        return d

    def runtime_dict(self) -> dict:
        """The speed-only settings a job's executor needs besides its spec (``Job.runtime``)."""
        return {k: getattr(self, k) for k in self.RUNTIME_FIELDS if getattr(self, k) not in (None, 0)}

    @classmethod
    def from_job(cls, data: dict, runtime: dict | None = None) -> "DataSpec":
        """The DataSpec of a job: its spec's ``data`` plus the runtime settings."""
        return cls.model_validate({**data, **(runtime or {})})
