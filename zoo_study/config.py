"""The typed study config: TOML -> validated objects, with ``--set key=value`` overrides.

Why pydantic: a bad value must fail before anything runs, naming the key, the value and what is valid
(:class:`ConfigError` carries a one-line message for the CLI, which exits with code 2).
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


METHODS = ("kl", "xe_kl", "xe_kl_ls", "kl_topk", "kl_dp", "kl_dp_unsup", "xe_kl_mcl", "cd", "crd")
MULTI_MODES = ("sequential", "parallel", "soup")


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the key, the value and what is valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Strict):
    name: str = "study"
    results_root: str = "runs/study"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GeneratedSection(_Strict):
    seed: int = 0
    num_superclasses: int = Field(10, ge=1, le=10)
    classes_per_superclass: int = Field(10, ge=1, le=10)
    image_size: int = Field(32, ge=8, le=256)
    n_train: int = Field(16000, ge=1)
    n_eval: int = Field(4000, ge=1)
    difficulty: float = Field(0.4, ge=0)


class DataSection(_Strict):
    kind: Literal["generated", "imagefolder"] = "generated"
    root: str | None = None  # imagefolder: dataset root; falls back to $ZOO_STUDY_IMAGENET
    raw_size: int = Field(256, ge=8)
    generated: GeneratedSection = GeneratedSection()


class ModelEntry(_Strict):
    """One model of the zoo given explicitly."""

    id: str
    source: Literal["timm", "local", "embedded", "random"] = "timm"
    arch: str | None = None
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] = {}
    family: Literal["cnn", "transformer", "mlp"] | None = None
    reported_top1: float | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _needs(self) -> "ModelEntry":
        if self.source in ("local", "embedded") and not self.checkpoint:
            raise ValueError(f"zoo.models entry {self.id!r}: source={self.source!r} needs checkpoint=")
        if self.source in ("timm", "random") and not self.arch:
            raise ValueError(f"zoo.models entry {self.id!r}: source={self.source!r} needs arch=")
        return self


class ZooSection(_Strict):
    embedded: Literal["all", "none"] | list[str] = "all"  # recipes of the embedded zoo to train
    epochs_scale: float = Field(1.0, gt=0)  # shrink embedded training (smoke tests)
    paper_study: Literal["", "imagenet_10pct", "imagenet_full", "multi_teacher"] = ""
    models: list[ModelEntry] = []
    random_teachers: list[str] = []  # archs (or embedded ids) initialised at random: the noise floor

    @field_validator("embedded")
    @classmethod
    def _known_recipes(cls, v):
        if isinstance(v, list):
            from zoo_study.zoo.recipes import EMBEDDED_RECIPES

            known = [r.model_id for r in EMBEDDED_RECIPES]
            bad = [x for x in v if x not in known]
            if bad:
                raise ValueError(f"unknown embedded recipe(s) {bad}; valid: {known}")
        return v


class PredictSection(_Strict):
    batch_size: int = Field(256, ge=1)
    topk: int = Field(5, ge=0)


class ScoreSection(_Strict):
    pairs: Literal["all", "random", "explicit"] = "all"
    k: int | None = Field(None, ge=1)
    seed: int = 0
    explicit: list[tuple[str, str]] = []

    @model_validator(mode="after")
    def _k(self) -> "ScoreSection":
        if self.pairs == "random" and self.k is None:
            raise ValueError("score.pairs='random' needs score.k (number of pairs)")
        if self.pairs == "explicit" and not self.explicit:
            raise ValueError("score.pairs='explicit' needs score.explicit = [[teacher, student], ...]")
        return self


class TransferSection(_Strict):
    enabled: bool = True
    methods: list[str] = ["kl", "xe_kl", "xe_kl_mcl", "kl_dp", "kl_dp_unsup"]
    pairs: Literal["sample", "explicit", "grid", "paper"] = "sample"
    n_pairs: int = Field(6, ge=1)  # 'sample': pairs drawn from the scored pairs, stratified by delta_acc
    explicit: list[tuple[str, str]] = []  # (teacher, student)
    students: list[str] = []  # 'grid': every teacher x student
    teachers: list[str] = []
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    transfer_fraction: float = Field(0.1, gt=0, le=1)
    seeds: list[int] = [0]
    augment: Literal["paper", "flip", "none"] = "paper"  # flip: when colour is part of the label
    student_mode: Literal["train", "frozen_norm", "eval"] = "train"  # train = the paper
    hparams: dict[str, dict[str, Any]] = {}  # per-method overrides, e.g. {kl_dp = {lr = 1e-4}}

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown transfer method(s) {bad}; valid: {list(METHODS)}")
        return v

    @field_validator("hparams")
    @classmethod
    def _hp(cls, v):
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"transfer.hparams has unknown method(s) {bad}; valid: {list(METHODS)}")
        return v


class MultiTeacherSection(_Strict):
    enabled: bool = False
    students: list[str] = []
    teachers: list[str] = []
    modes: list[Literal["sequential", "parallel", "soup"]] = list(MULTI_MODES)
    method: str = "kl_dp"
    order: Literal["ascending", "descending", "given"] = "ascending"
    epochs: int | None = Field(None, ge=1)  # per teacher; defaults to transfer.epochs
    single_baselines: bool = True  # also each teacher alone (same method, epochs): the paper's Tab 4 baseline


class HparamSection(_Strict):
    enabled: bool = False
    methods: list[str] = ["kl_dp"]
    n_pairs: int = Field(3, ge=1)
    grid: dict[str, list[Any]] = {}  # e.g. {lr = [1e-3, 1e-4], temperature = [1.0, 4.0]}; {} = the method's default grid
    epochs: int | None = Field(None, ge=1)


class RaySection(_Strict):
    address: str = ""  # "" local Ray (honours RAY_ADDRESS), "auto" join a cluster, "local" no Ray
    num_cpus: int | None = Field(None, ge=1)
    gpus_per_job: float = Field(0.0, ge=0)
    cpus_per_job: float = Field(1.0, gt=0)
    max_retries: int = Field(2, ge=0)


class StudyConfig(_Strict):
    study: StudySection = StudySection()
    data: DataSection = DataSection()
    zoo: ZooSection = ZooSection()
    predict: PredictSection = PredictSection()
    score: ScoreSection = ScoreSection()
    transfer: TransferSection = TransferSection()
    multi_teacher: MultiTeacherSection = MultiTeacherSection()
    hparam_search: HparamSection = HparamSection()
    ray: RaySection = RaySection()

    def results_root(self) -> Path:
        return Path(os.path.expanduser(self.study.results_root))

    def to_toml(self) -> str:
        return dump_toml(self.model_dump(mode="json", exclude_none=True))


# ----------------------------------------------------------------------------------------- loading
def _parse_value(text: str) -> Any:
    """A --set value: TOML/JSON literal when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (a copy)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set transfer.epochs=2")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value.strip())
    return out


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in first["loc"][:-1])
        model = StudyConfig
        for p in first["loc"][:-1]:
            field = model.model_fields.get(str(p)) if hasattr(model, "model_fields") else None
            model = field.annotation if field is not None else None
            if model is None or not hasattr(model, "model_fields"):
                break
        valid = sorted(model.model_fields) if model is not None and hasattr(model, "model_fields") else []
        where = f"section [{section}]" if section else "the top level"
        return f"unknown config key {loc!r} in {where}; valid keys: {', '.join(valid)}"
    value = first.get("input")
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"invalid config value for {loc!r}: {shown}: {msg}"


def validate_config(raw: dict[str, Any]) -> StudyConfig:
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] = ()) -> StudyConfig:
    """Read a TOML study file (None = the embedded demo), apply overrides, validate."""
    if path is None:
        path = default_config_path()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; try `zoo-study run` for the demo or a path to a .toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    return validate_config(apply_overrides(raw, list(overrides)))


def default_config_path() -> Path:
    return Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.toml"


# ------------------------------------------------------------------------------------------ dumping
def dump_toml(data: dict[str, Any]) -> str:
    """TOML text of a plain dict (the resolved config saved next to the results)."""
    import tomli_w

    return tomli_w.dumps(data)
