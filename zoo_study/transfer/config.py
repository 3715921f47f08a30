"""TransferConfig: everything that defines one transfer job besides the models and the data.

Why pydantic, and why resolved: the study config's ``[transfer]`` section and a job's spec are the same
type (:class:`TransferSettings` is their common part), so a bad value fails when the study is loaded or
planned, naming the key, the value and what is valid, never twenty epochs into a worker. A validated
config is *fully resolved*: the method's defaults are filled into ``hparams``, ``base_lr`` and
``temperature``, and ``lr`` / ``T`` given among the hyper-parameters are moved to their fields. Two
configs that mean the same are therefore equal and dump to the same JSON, which the pipeline hashes
into the job id; the worker re-validates that JSON (validation is idempotent).

The lr actually used is ``base_lr * batch / 256`` with the batch actually used (the transfer set may be
smaller than ``batch_size``); both are recorded in the summary. This module imports no torch.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoo_study.methods.registry import Method, get_method, multi_teacher_methods
from zoo_study.transfer.protocol import check_lr_in_grid

__all__ = ["TransferSettings", "TransferConfig", "MODES", "TEACHER_ORDERS", "STUDY_PARTS", "STUDENT_MODES",
           "AUGMENTS", "REFERENCE_BATCH", "split_method_hparams", "first_error", "PACK_SHARED", "pack_key",
           "check_pack"]

MODES = ("single", "sequential", "parallel", "soup")
TEACHER_ORDERS = ("given", "ascending", "descending")
STUDY_PARTS = ("transfer", "multi_teacher", "hparam")
STUDENT_MODES = ("train", "frozen_norm", "eval")
# paper: flip + colour distortion (p 0.8) + grayscale (p 0.2); flip: flip only (for data whose labels
# are colours, like the generated shapes); none: no augmentation
AUGMENTS = ("paper", "flip", "none")
REFERENCE_BATCH = 256
# config fields that may also appear among the method's hyper-parameters, with their accepted names
HPARAM_FIELDS = {"base_lr": ("lr", "base_lr"), "temperature": ("temperature", "T")}


def _finite(v: float | None, name: str) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return v


def split_method_hparams(method: str, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``given`` split into (method hyper-parameters, config fields ``base_lr`` / ``temperature``).

    Raises when a field is given twice under two names with different values."""
    hp = dict(given)
    fields: dict[str, Any] = {}
    for field_name, aliases in HPARAM_FIELDS.items():
        found = [(a, hp.pop(a)) for a in aliases if a in hp]
        if not found:
            continue
        if len({json.dumps(v) for _, v in found}) > 1:
            raise ValueError(f"method {method!r}: {field_name} given twice with different values "
                             f"({', '.join(f'{a}={v!r}' for a, v in found)})")
        fields[field_name] = found[0][1]
    return hp, fields


class TransferSettings(BaseModel):
    """The settings a study shares across its transfer jobs (and that a job carries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    # evaluate the student every k epochs (and always after the last); 1 = every epoch, the paper's
    # protocol and the default. Larger values make long, small jobs cheaper; "best" then ranges over the
    # evaluated epochs only.
    eval_every: int = Field(1, ge=1)
    transfer_fraction: float = Field(0.1, gt=0, le=1)  # stratified share of the train split
    # or exactly this many samples of every class (the paper draws 130 per class of ImageNet); wins over
    # transfer_fraction when set
    transfer_per_class: int | None = Field(None, ge=1)
    subset_seed: int = Field(0, ge=0)  # draws the transfer set (fixed across training seeds, as in the paper)
    # multiplies each method's default lr (the paper's per-method settings keep their ratios); an lr
    # given explicitly (transfer.hparams.<method>.lr, a grid point) is used as given
    lr_scale: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, le=1)
    weight_decay: float = Field(1e-3, ge=0)
    student_mode: Literal["train", "frozen_norm", "eval"] = "train"  # train = the paper
    augment: Literal["paper", "flip", "none"] = "paper"  # flip: when colour is part of the label
    amp: bool | None = None  # bf16 autocast; None: on for CUDA, off on CPU (exactly reproducible)
    keep_best: bool = True
    # pretrained: the study's setting (a trained student); scratch: the student architecture freshly
    # initialised with the job's seed (the setting of the mixup-KD / AMTML / Talking-Models papers); gain
    # and loss are then counted against that untrained student
    student_init: Literal["pretrained", "scratch"] = "pretrained"
    # batch mixing for any objective (METHOD.md section 5, Choi et al.): none | pmu (exactly
    # round(mixup_share * batch) samples of each batch mixed) | fmu (all mixed); lambda ~ Beta(a, a) per
    # batch; teacher and student see the same mixed images, CE terms the mixed labels
    mixup: Literal["none", "pmu", "fmu"] = "none"
    mixup_share: float = Field(0.1, gt=0, le=1)
    mixup_alpha: float = Field(1.0, gt=0)
    # as_given: every value as configured. paper_ratios: a run with fewer steps than the paper keeps its
    # ratios (zoo_study/transfer/protocol.py): MCL's tau is rescaled so the slow model takes the paper's
    # share of the fast trajectory, and no method's lr may leave the grid the paper searched
    protocol: Literal["as_given", "paper_ratios"] = "as_given"
    # constant: the paper's fine-tuning lr, the same every step. one_cycle: the zoo recipes' schedule
    # (zoo_study/zoo/train.py: warm up over the first 15% of a phase's steps, then cosine down to ~0), which
    # a student trained from scratch needs to converge (the Mixup-KD study, pipelines/configs/mixup_kd.toml)
    lr_schedule: Literal["constant", "one_cycle"] = "constant"

    @field_validator("transfer_fraction", "momentum", "weight_decay", "lr_scale", "mixup_share", "mixup_alpha")
    @classmethod
    def _finite_fields(cls, v: float, info) -> float:
        return _finite(v, info.field_name)

    def settings(self) -> dict[str, Any]:
        """The shared settings as keyword arguments for a :class:`TransferConfig`."""
        return {k: getattr(self, k) for k in TransferSettings.model_fields}


class TransferConfig(TransferSettings):
    """One transfer job's settings, validated and resolved.

    - ``method``: a registry name (:func:`zoo_study.methods.method_names`).
    - ``mode``: single (one teacher) | sequential | parallel (routing methods only) | soup.
    - ``hparams``: the method's own parameters (lambda, k, tau, N, beta, ...), defaults filled in.
      ``lr`` / ``base_lr`` and ``temperature`` / ``T`` found here are moved to their fields.
    - ``base_lr``: lr for batch 256 (default: the method's); ``temperature`` likewise.
    - ``seed`` drives shuffling, augmentation and any randomness of the objective.
    - ``teacher_order``: multi-teacher modes; given | ascending | descending teacher eval accuracy: the
      stage order of sequential, and for parallel / soup the listed order (the rho reference is the
      first teacher). Ignored for single.
    - ``study_part``: transfer | multi_teacher | hparam (default: transfer for single, else multi_teacher).
    - ``student_mode``: train (paper) | frozen_norm (BatchNorm statistics frozen) | eval.
    - ``augment``: paper (flip, colour distortion p 0.8, grayscale p 0.2) | flip | none.
    """

    method: str
    mode: Literal["single", "sequential", "parallel", "soup"] = "single"
    hparams: dict[str, Any] = {}
    base_lr: float | None = Field(None, gt=0)
    temperature: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    teacher_order: Literal["given", "ascending", "descending"] = "given"
    study_part: Literal["transfer", "multi_teacher", "hparam"] | None = None
    # the transfer.variants entry this job copies the study's transfer under (canonical JSON); "" for the
    # study's own transfers. The paper's analyses read only those (analysis: the paper_transfers view)
    variant: str = ""

    @model_validator(mode="before")
    @classmethod
    def _move_aliases(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("hparams"), Mapping):
            return data
        data = dict(data)
        hp, fields = split_method_hparams(str(data.get("method")), data["hparams"])
        for name, value in fields.items():
            if data.get(name) is not None and json.dumps(data[name]) != json.dumps(value):
                raise ValueError(f"{name} given twice with different values ({name}={data[name]!r} and "
                                 f"{value!r} among the method's hyper-parameters)")
            data[name] = value
        data["hparams"] = hp
        return data

    @model_validator(mode="after")
    def _resolve(self) -> "TransferConfig":
        m = get_method(self.method)  # raises with the valid names
        object.__setattr__(self, "hparams", m.resolve_params(self.hparams))
        _finite(self.base_lr, "base_lr")
        _finite(self.temperature, "temperature")
        if self.base_lr is None:
            object.__setattr__(self, "base_lr", float(m.lr) * self.lr_scale)
        if self.temperature is None:
            object.__setattr__(self, "temperature", float(m.temperature))
        if self.study_part is None:
            object.__setattr__(self, "study_part", "transfer" if self.mode == "single" else "multi_teacher")
        if self.protocol == "paper_ratios":
            check_lr_in_grid(self.method, float(self.base_lr), (m.grid or {}).get("base_lr", ()))
        if self.mode == "parallel" and not m.multi_teacher:
            raise ValueError(f"method={self.method!r} cannot run in parallel mode; routing methods: "
                             f"{', '.join(multi_teacher_methods())}")
        return self

    def __hash__(self) -> int:  # hparams is a dict
        return hash(self.to_json())

    # ------------------------------------------------------------------------------------ resolved
    @property
    def method_spec(self) -> Method:
        return get_method(self.method)

    @property
    def resolved_hparams(self) -> dict[str, Any]:
        return dict(self.hparams)

    @property
    def hparams_json(self) -> str:
        """Canonical JSON of the method parameters (the summary's ``hparams_json``)."""
        return json.dumps(self.hparams, sort_keys=True, separators=(",", ":"))

    @property
    def resolved_base_lr(self) -> float:
        return float(self.base_lr)

    @property
    def resolved_temperature(self) -> float:
        return float(self.temperature)

    @property
    def resolved_study_part(self) -> str:
        return str(self.study_part)

    def lr_for_batch(self, batch: int) -> float:
        """Linear scaling of the base lr (defined for batch 256) to the batch actually used."""
        return self.resolved_base_lr * batch / REFERENCE_BATCH

    # ------------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """The resolved dump; settings added after results existed are left out at their defaults, so
        adding an option never changes the id (and the resume) of a job that does not use it."""
        d = self.model_dump(mode="json")
        for k, default in OMITTED_AT_DEFAULT.items():
            if d.get(k) == default:
                del d[k]
        if d.get("mixup", "none") == "none":  # share and alpha mean nothing without mixing
            d.pop("mixup_share", None)
            d.pop("mixup_alpha", None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TransferConfig":
        """Validate a mapping (a job spec's ``config``); errors are one-line ValueErrors."""
        if not isinstance(d, Mapping):
            raise TypeError(f"transfer config must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"transfer config: unknown key(s) {unknown}; valid: {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate(dict(d))
        except ValidationError as err:
            raise ValueError(f"transfer config: {first_error(err)}") from None


# settings that must be equal for transfers to share their batches (zoo_study.transfer.phase)
PACK_SHARED = ("seed", "batch_size", "epochs", "eval_every", "eval_batch_size", "augment", "transfer_fraction",
               "transfer_per_class", "subset_seed", "amp", "student_init", "mixup", "mixup_share", "mixup_alpha")
# settings added after the first results: absent from a job's dump (and id) while at these defaults
# (mixup_share and mixup_alpha are left out whenever mixup is none: they mean nothing then)
OMITTED_AT_DEFAULT = {"student_init": "pretrained", "mixup": "none", "variant": "", "protocol": "as_given",
                      "lr_schedule": "constant"}
_MIX_DEFAULTS = {"mixup_share": 0.1, "mixup_alpha": 1.0}
_PACK_DEFAULTS = {**OMITTED_AT_DEFAULT, **_MIX_DEFAULTS}  # what a dump without these keys means


def pack_key(config: TransferConfig | Mapping[str, Any]) -> tuple:
    """Configs (or their dumps) with equal keys see the same batches and may run in one pack."""
    d = config if isinstance(config, Mapping) else config.to_dict()
    return (d.get("mode", "single"),) + tuple(d.get(k, _PACK_DEFAULTS.get(k)) for k in PACK_SHARED)


def check_pack(configs: Sequence[TransferConfig | Mapping[str, Any]]) -> None:
    """Refuse, with one clear error, configs that cannot share their batches in one pack (unequal
    :func:`pack_key`). The worker's one check of a pack (the pipeline's planner already keyed its jobs by
    the same function, ``Job.pack``); a lone config needs none."""
    if len(configs) > 1 and len({pack_key(c) for c in configs}) > 1:
        raise ValueError(f"transfers packed together must share seed, batch size, epochs, evaluation and transfer "
                         f"set ({', '.join(PACK_SHARED)}) and mode (zoo_study.transfer.config.pack_key)")


def first_error(err: ValidationError) -> str:
    """One line for the first problem of a ValidationError: the key, the value and what is valid."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if not loc:
        return msg
    return f"{loc}={e.get('input')!r}: {msg}"
