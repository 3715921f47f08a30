"""Catalog records (one row of ``zoo/models``) and the shipped tables: paper model lists, family map."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from zoo_study.store import MODEL_SCHEMA

FAMILIES = ("cnn", "transformer", "mlp")
DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@dataclass
class CatalogRecord:
    """What the study needs to know about a model besides its weights (MODEL_SCHEMA)."""

    model_id: str
    source: str  # timm | local | embedded | random
    arch: str
    family: str
    params_m: float
    num_classes: int
    input_size: list[int]
    crop_pct: float
    interpolation: str
    mean: list[float]
    std: list[float]
    reported_top1: float | None = None
    checkpoint: str | None = None
    weights_id: str | None = None
    recipe_json: str | None = None
    train_seconds: float | None = None

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist([asdict(self)], schema=MODEL_SCHEMA)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "CatalogRecord":
        return cls(**{k: row[k] for k in MODEL_SCHEMA.names})


@lru_cache(maxsize=1)
def family_map() -> dict[str, str]:
    """timm architecture prefix -> family, from ``data/family_map.csv`` (longest prefix wins)."""
    path = DATA_DIR / "family_map.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["arch_prefix"]: row["family"] for row in csv.DictReader(fh)}


def family_of(arch: str) -> str:
    """The family (cnn / transformer / mlp) of a timm architecture name, e.g. 'resnet50.a1_in1k' -> 'cnn'.

    Raises a clear error for an architecture the shipped family map does not cover.
    """
    base = arch.split(".")[0]
    if base.startswith("zoo_"):
        base = base[len("zoo_"):]
    best = ""
    for prefix in family_map():
        if base.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if not best:
        raise ValueError(
            f"no family known for architecture {arch!r}; add its prefix to data/family_map.csv "
            f"(families: {', '.join(FAMILIES)}) or set family= on the model"
        )
    return family_map()[best]


@lru_cache(maxsize=1)
def paper_models() -> list[dict[str, Any]]:
    """The paper's model lists (Tables 5 and 6, multi-teacher study) with timm names, from data/."""
    path = DATA_DIR / "paper_models.csv"
    if not path.is_file():
        raise FileNotFoundError(f"shipped table {path} is missing; reinstall zoo-study from a full checkout")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))

