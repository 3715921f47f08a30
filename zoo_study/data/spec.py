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

__all__ = ["GeneratedSpec", "DataSpec", "IMAGENET_ENV", "CACHE_ENV", "NO_CACHE", "MAX_SHAPES", "MAX_COLOURS",
           "default_cache_dir", "resolve_data_paths", "resolved_cache_dir"]

IMAGENET_ENV = "ZOO_STUDY_IMAGENET"
CACHE_ENV = "ZOO_STUDY_CACHE"  # the decoded-image cache folder when data.cache_dir is not set
NO_CACHE = ("none", "")  # data.cache_dir values that turn the decoded-image cache off
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
    # ImageFolder decoded-image cache (zoo_study.data.cache), on by default: a node-local folder; not set =
    # $ZOO_STUDY_CACHE or ~/.cache/zoo-study/images (default_cache_dir); "none" = decode on the fly
    cache_dir: str | None = None
    # the pixels, cached or not: "model" (default): per distinct timm eval geometry of the job's models,
    # timm's eval transform exactly; "raw": raw_size squares resampled per model (older, not timm's pixels)
    cache_geometry: Literal["model", "raw"] = "model"
    cache_workers: int = Field(0, ge=0)  # decoding processes for a cache build; 0 = one per CPU
    on_bad_image: Literal["skip", "fail"] = "fail"  # unreadable image at cache build: drop and count, or fail
    # DataLoader processes decoding an on-disk split without a cache; not set = one per CPU, at most 8
    loader_workers: int | None = Field(None, ge=0)

    # settings that change only speed, not results: kept out of job ids (see job_dict / runtime_dict)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("cache_dir", "cache_workers", "loader_workers")

    @property
    def cache_enabled(self) -> bool:
        """Whether ImageFolder data is read through the decoded-image cache (the default)."""
        return self.kind == "imagefolder" and (self.cache_dir is None or self.cache_dir.strip().lower() not in NO_CACHE)

    def resolved_root(self) -> str:
        root = self.root or os.environ.get(IMAGENET_ENV)
        if not root:
            raise FileNotFoundError(
                f"data.kind='imagefolder' needs a dataset root: set data.root in the config or {IMAGENET_ENV}"
            )
        return root

    def job_dict(self) -> dict:
        """What a job spec holds (and its id hashes): what changes the pixels and the samples.

        Generated data carries no root; the cache location and the worker counts change only speed
        (:meth:`runtime_dict`). For ImageFolder data the geometry always enters (the pixels depend on
        it, cached or not: ids of studies made before the on-the-fly path rendered model geometries
        change, as their predictions do), except ``raw`` without a cache, the older lazy path's pixels;
        the bad-image policy enters when a cache is used (it decides which samples there are)."""
        d = self.model_dump(mode="json", exclude={*self.RUNTIME_FIELDS, "cache_geometry", "on_bad_image"})
        if self.kind == "generated":
            d.pop("root", None)
        gen = d.get("generated", {})
        for key, default in (("class_set", "a"), ("domain", "photo")):  # added later: ids kept at defaults
            if gen.get(key) == default:
                gen.pop(key)
        if self.kind == "imagefolder" and (self.cache_enabled or self.cache_geometry != "raw"):
            d["cache_geometry"] = self.cache_geometry
        if self.kind == "imagefolder" and (self.cache_enabled or self.on_bad_image != "fail"):
            d["on_bad_image"] = self.on_bad_image
        return d

    def runtime_dict(self) -> dict:
        """The speed-only settings a job's executor needs besides its spec (``Job.runtime``), resolved
        where this runs (the driver): for ImageFolder data the cache folder is always named (a path or
        ``"none"``), so a worker never falls back to its own environment."""
        out = {k: getattr(self, k) for k in ("cache_workers",) if getattr(self, k) not in (None, 0)}
        if self.loader_workers is not None:
            out["loader_workers"] = self.loader_workers
        if self.kind == "imagefolder":
            out["cache_dir"] = resolved_cache_dir(self) or "none"
        elif self.cache_dir is not None:
            out["cache_dir"] = self.cache_dir
        return out

    @classmethod
    def from_job(cls, data: dict, runtime: dict | None = None) -> "DataSpec":
        """The DataSpec of a job: its spec's ``data`` plus the runtime settings."""
        return cls.model_validate({**data, **(runtime or {})})


def default_cache_dir() -> str:
    """The node-local decoded-image cache folder used when ``data.cache_dir`` is not set: ``$ZOO_STUDY_CACHE``,
    else ``$XDG_CACHE_HOME/zoo-study/images``, else ``~/.cache/zoo-study/images``."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "zoo-study", "images"))


def resolve_data_paths(spec: DataSpec) -> tuple[str | None, str | None]:
    """``(dataset root, cache folder)`` as absolute paths, resolved here (on the driver) from the config
    and the environment (``ZOO_STUDY_IMAGENET``, ``ZOO_STUDY_CACHE``), so that a worker never reads either
    variable: ``(None, None)`` for generated data; the cache folder is None when the cache is off
    (``data.cache_dir = "none"``). Raises FileNotFoundError when an ImageFolder study has no root."""
    if spec.kind != "imagefolder":
        return None, None
    return os.path.abspath(os.path.expanduser(spec.resolved_root())), resolved_cache_dir(spec)


def resolved_cache_dir(spec: DataSpec) -> str | None:
    """The absolute decoded-image cache folder of an ImageFolder spec, or None (generated data, cache off)."""
    if not spec.cache_enabled:
        return None
    cache = spec.cache_dir if spec.cache_dir is not None else default_cache_dir()
    return os.path.abspath(os.path.expanduser(cache))
