"""TransferConfig: everything that defines one transfer job besides the models and the data.

Why a frozen dataclass with ``from_dict`` / ``to_dict``: the pipeline hashes a job's canonical spec into
its id, so a config must round-trip through JSON unchanged, and a bad value must fail when the study is
planned (naming the value and what is valid), not twenty epochs into a job.

``base_lr`` and ``temperature`` default to the method's registry defaults (METHOD.md: KL+DP lr 1e-4,
T = 1; XE-KL + MCL lr 0.01). The lr actually used is ``base_lr * batch / 256`` with the batch actually
used (the transfer set may be smaller than ``batch_size``); both are recorded in the summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from zoo_study.transfer.objectives import Objective, get_objective

__all__ = ["TransferConfig", "MODES", "TEACHER_ORDERS", "STUDY_PARTS", "STUDENT_MODES"]

MODES = ("single", "sequential", "parallel", "soup")
TEACHER_ORDERS = ("given", "ascending", "descending")
STUDY_PARTS = ("transfer", "multi_teacher", "hparam")
STUDENT_MODES = ("train", "frozen_norm", "eval")
# paper: flip + colour distortion (p 0.8) + grayscale (p 0.2); flip: flip only (for data whose labels
# are colours, like the generated shapes); none: no augmentation
AUGMENTS = ("paper", "flip", "none")
REFERENCE_BATCH = 256
# config fields that may also appear among the method's hyper-parameters, with their accepted names
_HPARAM_FIELDS = {"base_lr": ("lr", "base_lr"), "temperature": ("temperature", "T")}


def _err(name: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"transfer config: {name}={value!r} is invalid; valid: {valid}")


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _err(name, value, f"an integer >= {low}")
    return value


def _float(name: str, value: Any, low: float, high: float | None = None, low_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        lb = "(" if low_open else "["
        raise _err(name, value, f"a number in {lb}{low:g}, {'inf)' if high is None else f'{high:g}]'}")
    return float(value)


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise _err(name, value, ", ".join(valid))
    return value


@dataclass(frozen=True)
class TransferConfig:
    """One transfer job's settings.

    - ``method``: a registry name (kl, xe_kl, xe_kl_ls, kl_topk, kl_dp, kl_dp_unsup, xe_kl_mcl, cd, crd).
    - ``mode``: single (one teacher) | sequential | parallel (kl_dp / kl_dp_unsup only) | soup.
    - ``hparams``: the method's own parameters (lambda, k, tau, N, beta, ...); missing ones take defaults.
      ``lr`` / ``base_lr`` and ``temperature`` / ``T`` found here are moved to their fields.
    - ``base_lr``: lr for batch 256 (None: the method's default); ``temperature`` likewise.
    - ``transfer_fraction``: stratified share of the train split used for transfer, drawn with
      ``subset_seed`` (fixed across training seeds, as in the paper); ``seed`` drives shuffling,
      augmentation and any randomness of the objective.
    - ``teacher_order``: multi-teacher modes; given | ascending | descending teacher eval accuracy: the
      stage order of sequential, and for parallel / soup the listed order (the rho reference is the
      first teacher). Ignored for single.
    - ``study_part``: transfer | multi_teacher | hparam (None: transfer for single, else multi_teacher).
    - ``student_mode``: train (paper) | frozen_norm (BatchNorm statistics frozen, rest in train mode) |
      eval (no dropout / drop-path, BN frozen; gradients still flow).
    - ``augment``: paper (flip, colour distortion p 0.8, grayscale p 0.2) | flip | none. Use ``flip`` when
      colour is part of the label (the generated shapes data): colour distortion would change the class.
    - ``amp``: bf16 autocast (None: on for CUDA, off on CPU so CPU runs are exactly reproducible).
    """

    method: str
    mode: str = "single"
    hparams: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 256
    base_lr: float | None = None
    temperature: float | None = None
    transfer_fraction: float = 0.1
    seed: int = 0
    subset_seed: int = 0
    teacher_order: str = "given"
    eval_batch_size: int = 256
    study_part: str | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-3
    student_mode: str = "train"
    augment: str = "paper"
    amp: bool | None = None
    keep_best: bool = True

    def __post_init__(self) -> None:
        obj = get_objective(self.method)  # raises with the valid names
        if not isinstance(self.hparams, Mapping):
            raise _err("hparams", self.hparams, "a mapping of the method's hyper-parameters")
        hp = dict(self.hparams)
        # lr and temperature may also be given with the method's parameters (a TOML table of per-method
        # overrides, a grid point); they are moved to their fields so hparams_json holds method params only
        for field_name, aliases in _HPARAM_FIELDS.items():
            given = [(a, hp.pop(a)) for a in aliases if a in hp]
            if not given:
                continue
            values = {v for _, v in given} | ({getattr(self, field_name)} if getattr(self, field_name) is not None else set())
            if len(values) > 1:
                raise ValueError(f"transfer config: {field_name} given twice with different values "
                                 f"({', '.join(f'{a}={v!r}' for a, v in given)}, {field_name}={getattr(self, field_name)!r})")
            object.__setattr__(self, field_name, given[0][1])
        object.__setattr__(self, "hparams", hp)
        obj.resolve_params(self.hparams)  # validates names and values
        _choice("mode", self.mode, MODES)
        if self.mode == "parallel" and not obj.multi_teacher:
            multi = ", ".join(sorted(n for n in _all_objectives() if get_objective(n).multi_teacher))
            raise _err("method", self.method, f"parallel mode needs a routing method: {multi}")
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("eval_batch_size", self.eval_batch_size, 1)
        _int("seed", self.seed, 0)
        _int("subset_seed", self.subset_seed, 0)
        if self.base_lr is not None:
            _float("base_lr", self.base_lr, 0.0)
        if self.temperature is not None:
            _float("temperature", self.temperature, 0.0)
        _float("transfer_fraction", self.transfer_fraction, 0.0, 1.0)
        _float("momentum", self.momentum, 0.0, 1.0, low_open=False)
        _float("weight_decay", self.weight_decay, 0.0, None, low_open=False)
        _choice("teacher_order", self.teacher_order, TEACHER_ORDERS)
        _choice("student_mode", self.student_mode, STUDENT_MODES)
        _choice("augment", self.augment, AUGMENTS)
        if self.study_part is not None:
            _choice("study_part", self.study_part, STUDY_PARTS)
        if self.amp not in (None, True, False):
            raise _err("amp", self.amp, "true, false or null (auto: on for CUDA)")
        if self.keep_best not in (True, False):
            raise _err("keep_best", self.keep_best, "true or false")

    def __hash__(self) -> int:  # hparams is a dict
        return hash(self.to_json())

    # ------------------------------------------------------------------------------------ resolved
    @property
    def objective(self) -> Objective:
        return get_objective(self.method)

    @property
    def resolved_hparams(self) -> dict[str, Any]:
        """The method's parameters with defaults filled in (what the run used)."""
        return self.objective.resolve_params(self.hparams)

    @property
    def hparams_json(self) -> str:
        """Canonical JSON of the resolved method parameters (the summary's ``hparams_json``)."""
        return json.dumps(self.resolved_hparams, sort_keys=True, separators=(",", ":"))

    @property
    def resolved_base_lr(self) -> float:
        return float(self.base_lr if self.base_lr is not None else self.objective.lr)

    @property
    def resolved_temperature(self) -> float:
        return float(self.temperature if self.temperature is not None else self.objective.temperature)

    @property
    def resolved_study_part(self) -> str:
        if self.study_part is not None:
            return self.study_part
        return "transfer" if self.mode == "single" else "multi_teacher"

    def lr_for_batch(self, batch: int) -> float:
        """Linear scaling of the base lr (defined for batch 256) to the batch actually used."""
        return self.resolved_base_lr * batch / REFERENCE_BATCH

    # ------------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(getattr(self, f.name)) if f.name == "hparams" else getattr(self, f.name))
                for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TransferConfig":
        if not isinstance(d, Mapping):
            raise TypeError(f"transfer config must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"transfer config: unknown key(s) {unknown}; valid: {', '.join(names)}")
        if "method" not in d:
            raise ValueError("transfer config: 'method' is required")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "TransferConfig":
        return TransferConfig.from_dict({**self.to_dict(), **changes})


def _all_objectives() -> list[str]:
    from zoo_study.transfer.objectives import method_names

    return method_names()
