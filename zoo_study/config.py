"""The typed study config: TOML -> validated objects, with ``--set key=value`` overrides.

Why pydantic: a bad value must fail before anything runs, naming the key, the value and what is valid
(:class:`ConfigError` carries a one-line message for the CLI, which exits with code 2).

One shape per concept: the sections are the library's own types where the library takes them
(``[data]`` is a :class:`~zoo_study.data.spec.DataSpec`, ``[score]`` a
:class:`~zoo_study.scoring.pairs.PairSelection`, ``[[zoo.models]]`` entries are
:class:`~zoo_study.zoo.ref.ModelRef`, ``[transfer]`` extends
:class:`~zoo_study.transfer.config.TransferSettings`), and method names and hyper-parameters are checked
against the method registry (:mod:`zoo_study.methods`; the transfer sections: :mod:`zoo_study.config_transfer`).
This module imports no torch.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zoo_study.config_transfer import (  # noqa: F401  (MULTI_MODES re-exported)
    MULTI_MODES, HparamSection, MultiTeacherSection, TransferSection, check_methods)
from zoo_study.data.spec import DataSpec
from zoo_study.scoring.pairs import PairSelection
from zoo_study.zoo.ref import ModelRef


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the key, the value and what is valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Strict):
    name: str = Field("study", min_length=1)
    results_root: str = Field("runs/study", min_length=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("results_root")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("study.results_root must name a folder (an empty value would write into the "
                             "current directory)")
        return v


class AdaptSettings(_Strict):
    """How a model learns new data from its trained weights (zoo_study/zoo/adapt.py): ``finetune`` trains
    every weight, ``linear_probe`` only the classifier. A head for other classes starts fresh (seeded)."""

    mode: Literal["finetune", "linear_probe"] = "finetune"
    epochs: float = Field(2.0, gt=0, allow_inf_nan=False)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)

    def settings(self) -> dict[str, Any]:
        """Just these settings (not a subclass's other fields), as a job spec holds them."""
        return self.model_dump(mode="json", include=set(AdaptSettings.model_fields))


class AdaptSection(AdaptSettings):
    """Fig 9, another dataset: every model of the zoo is first trained on ``pretrain_data`` (embedded
    recipes; timm and local models come trained), then its head is replaced for the study's classes and it
    is fine-tuned (or linear-probed) on the study's data. Predict, score and transfer then run on the
    study's data as usual."""

    enabled: bool = False
    pretrain_data: DataSpec = DataSpec()  # where embedded recipes learn first (default: the embedded data)


class DomainModel(AdaptSettings):
    """Fig 10, a teacher from another domain: model ``model`` of the zoo, fine-tuned on the study's data
    with ``data`` changed (``{generated = {domain = "sketch"}}``, or ``{kind = "imagefolder", root =
    "/data/infograph"}`` for a folder of the same classes), joins the zoo as ``id`` (default
    ``<model>@<domain or "other">``) and is scored and used as a teacher on the study's own data."""

    model: str
    data: dict[str, Any] = Field(default_factory=dict)
    id: str = ""

    @property
    def model_id(self) -> str:
        if self.id:
            return self.id
        tag = (self.data.get("generated") or {}).get("domain") or "other"
        return f"{self.model}@{tag}"


class ZooSection(_Strict):
    embedded: Literal["all", "none"] | list[str] = "all"  # recipes of the embedded zoo to train
    epochs_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # shrink embedded training (smoke tests)
    paper_study: Literal["", "imagenet_10pct", "imagenet_full", "multi_teacher"] = ""
    models: list[ModelRef] = []
    random_teachers: list[str] = []  # archs (or embedded ids) initialised at random: the noise floor
    adapt: AdaptSection = AdaptSection()  # Fig 9: the zoo adapted from pretrain_data to the study's data
    cross_domain: list[DomainModel] = []  # Fig 10: zoo models fine-tuned on another domain

    @field_validator("embedded")
    @classmethod
    def _known_recipes(cls, v):
        if isinstance(v, list):
            from zoo_study.zoo.recipes import ALL_RECIPES

            known = ["all"] + [r.model_id for r in ALL_RECIPES]
            bad = [x for x in v if x not in known]
            if bad:
                raise ValueError(f"unknown embedded recipe(s) {bad}; valid: {known}")
            if not v:
                raise ValueError("zoo.embedded is an empty list; use \"none\" for no embedded model, \"all\", or recipe ids")
        return v


class PredictSection(_Strict):
    batch_size: int = Field(256, ge=1)
    topk: int = Field(5, ge=0)


class SemanticsSection(_Strict):
    """Fig 2b: how alike the classes of a teacher's expertise are (zoo_study/scoring/semantics.py); its own
    stage after scoring. ``encoder``: "lexical" (TF-IDF of words and character n-grams, offline) or
    "clip:<local model folder>" (the paper's CLIP text encoder, through transformers, offline)."""

    enabled: bool = True
    encoder: str = "lexical"
    random_sets: int = Field(200, ge=1)  # random class sets per pair and X: the baseline's spread
    seed: int = Field(0, ge=0)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v):
        from zoo_study.scoring.semantics import text_encoder

        text_encoder(v)  # raises with the valid forms
        return v


class RobustnessSection(_Strict):
    """Adversarial robustness and feature clustering of the students before and after transfer (METHOD.md
    section 5, zoo_study/robustness.py); its own stage, after the transfers. Enabling it makes transfer
    jobs keep their last student's weights (transfers/<id>/student.safetensors)."""

    enabled: bool = False
    # FGSM / I-FGSM budgets in pixel units of [0, 1] images (8/255 ~ 0.031 is the usual one)
    eps: list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = Field([2 / 255, 8 / 255], min_length=1)
    steps: int = Field(10, ge=1)  # I-FGSM: steps of eps / steps
    per_class: int | None = Field(None, ge=1)  # a stratified subset of the eval split (None: all of it)
    subset_seed: int = Field(0, ge=0)
    v_measure: bool = True  # k-means of penultimate features vs labels (scikit-learn)
    batch_size: int = Field(256, ge=1)
    methods: list[str] = []  # the transfers measured: these methods' ([] = every transfer job)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return check_methods("robustness.methods", v) if v else v


class RaySection(_Strict):
    address: str = ""  # "" local Ray (honours RAY_ADDRESS), "auto" join a cluster, "local" no Ray
    num_cpus: int | None = Field(None, ge=1)
    gpus_per_job: float = Field(0.0, ge=0, allow_inf_nan=False)
    cpus_per_job: float = Field(1.0, gt=0, allow_inf_nan=False)
    max_retries: int = Field(2, ge=0)
    # single-teacher transfers of one pair (methods, seeds of equal batches, grid points) run up to this
    # many per task, sharing data, teacher and frozen-student forwards and the eval pass; 1 = each alone.
    # Results and job ids are the same either way (tests/test_transfer_pack.py).
    pack_size: int = Field(16, ge=1)
    # a pack may also hold the transfers of up to this many students of one teacher (same batches and
    # teacher forward; each student keeps its own anchor forward and eval pass); 1 = one pair per pack
    pack_students: int = Field(1, ge=1)
    # on a GPU (gpus_per_job > 0): the memory a pack may fill, in GB, against its estimate (pipelines/memory.py:
    # every member's weights, gradients and momentum, the largest member's activations, the teacher once);
    # 0 = 80% of the smallest GPU's memory, read on the GPU nodes. A pack that still runs out of memory is
    # split and retried (pipelines/runner.py).
    pack_gpu_memory_gb: float = Field(0.0, ge=0, allow_inf_nan=False)


class ScoreSection(PairSelection):
    """``[score]``: which pairs to score (:class:`PairSelection`) and which of them keep per-class flip
    counts (``scores/pair_classes.parquet``). ``all`` (the default) keeps them for every scored pair; for
    a whole zoo that is ~N^2 x C rows, so ``transfer_pairs`` keeps them only for the transfer stage's
    pairs (what Fig 2a, 2b and 5a read) and ``none`` for no pair. The default adds nothing to the score
    job's spec, so its job id is unchanged."""

    pair_classes: Literal["all", "transfer_pairs", "none"] = "all"


class StudyConfig(_Strict):
    study: StudySection = StudySection()
    data: DataSpec = DataSpec()
    zoo: ZooSection = ZooSection()
    predict: PredictSection = PredictSection()
    score: ScoreSection = ScoreSection()
    semantics: SemanticsSection = SemanticsSection()
    transfer: TransferSection = Field(default_factory=TransferSection)  # a factory: no registry query at import
    multi_teacher: MultiTeacherSection = Field(default_factory=MultiTeacherSection)  # a factory: no registry query at import
    hparam_search: HparamSection = Field(default_factory=HparamSection)  # a factory: no registry query at import
    robustness: RobustnessSection = RobustnessSection()
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
