"""The config sections of a study's transfers: ``[transfer]`` (and its ``replicate``), ``[multi_teacher]``,
``[hparam_search]``, plus the method-name check every section that names methods shares.

Why a module of its own: these are the sections the method registry checks (names, hyper-parameters,
grids). A value is checked where its type lives: a method's hyper-parameters by its registry entry and
:class:`~zoo_study.transfer.config.TransferConfig` (the very type each job is built from), not by hand
here. Torch-free. :mod:`zoo_study.config` assembles them into the :class:`~zoo_study.config.StudyConfig`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoo_study.methods.registry import get_method, method_names, methods, multi_teacher_methods
from zoo_study.transfer.config import TransferConfig, TransferSettings, first_error

__all__ = ["HparamSection", "MULTI_MODES", "MultiTeacherSection", "ReplicateSection", "TransferSection",
           "check_methods"]

MULTI_MODES = ("sequential", "parallel", "soup")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_methods(key: str, names: list[str]) -> list[str]:
    """``names`` are registered methods, none repeated; else a ValueError naming ``key`` and the valid ones."""
    known = method_names()
    bad = [m for m in names if m not in known]
    if bad:
        raise ValueError(f"unknown transfer method(s) {bad} in {key}; valid: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{key} repeats a method: {names}")
    return names


def _check_hparams(key: str, method: str, given: dict[str, Any]) -> None:
    """One method's overrides, checked as every job of it will be: a :class:`TransferConfig` of that method
    (the registry checks names and values; ``lr`` / ``T`` go to their fields, which pydantic checks, strictly:
    ``lr = true`` is not 1.0)."""
    try:
        TransferConfig.model_validate({"method": method, "hparams": given}, strict=True)
    except ValidationError as err:
        raise ValueError(f"{key}.{method}: {first_error(err)}") from None


class ReplicateSection(_Strict):
    """Extra training seeds for the first ``n_pairs`` transfer pairs (their spread across seeds), for
    ``methods`` (empty: every method of the study)."""

    seeds: list[Annotated[int, Field(ge=0)]] = []
    n_pairs: int = Field(0, ge=0)
    methods: list[str] = []

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return check_methods("transfer.replicate.methods", v) if v else v


class TransferSection(TransferSettings):
    """The study's single-teacher transfers; the shared settings (epochs, batch, ...) are the very
    :class:`TransferSettings` every job's :class:`TransferConfig` is built from."""

    enabled: bool = True
    methods: list[str] = Field(["kl", "xe_kl", "xe_kl_mcl", "kl_dp", "kl_dp_unsup"], min_length=1)
    pairs: Literal["sample", "explicit", "grid", "paper"] = "sample"
    n_pairs: int = Field(6, ge=1)  # 'sample': pairs drawn from the scored pairs, stratified by delta_acc
    explicit: list[tuple[str, str]] = []  # (teacher, student)
    students: list[str] = []  # 'grid': every teacher x student
    teachers: list[str] = []
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1)
    hparams: dict[str, dict[str, Any]] = {}  # per-method overrides, e.g. {kl_dp = {lr = 1e-4}}
    replicate: ReplicateSection = ReplicateSection()
    # a study designed per claim: a method listed here runs on only that many of the pairs, spread evenly
    # over their delta_acc order (e.g. {xe_kl = 12, xe_kl_mcl = 12} of 30 pairs); unlisted methods run on all
    method_pairs: dict[str, Annotated[int, Field(ge=1)]] = {}
    # further copies of every single-teacher transfer with some settings changed, e.g. the mixup-KD grid
    # [{mixup = "pmu", mixup_share = 0.1}, {mixup = "fmu"}, {student_init = "scratch"}, {temperature = 4.0}];
    # each key must be a transfer setting (TransferSettings) or temperature, each variant is validated like
    # [transfer] itself. They also apply to multi_teacher.parallel_methods (AMTML-KD).
    variants: list[dict[str, Any]] = []

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return check_methods("transfer.methods", v)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v):
        valid = set(TransferSettings.model_fields) | {"temperature"}
        for i, variant in enumerate(v):
            bad = sorted(set(variant) - valid)
            if bad or not variant:
                raise ValueError(f"transfer.variants[{i}] {bad or '(empty)'}: each variant changes transfer "
                                 f"settings; valid keys: {', '.join(sorted(valid))}")
            temperature = variant.get("temperature")
            if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                                            or not temperature > 0 or temperature == float("inf")):
                raise ValueError(f"transfer.variants[{i}]: temperature={temperature!r} must be a number > 0")
            try:
                TransferSettings(**{k: x for k, x in variant.items() if k != "temperature"})
            except ValidationError as err:
                raise ValueError(f"transfer.variants[{i}]: {first_error(err)}") from None
        seen: dict[str, int] = {}
        for i, variant in enumerate(v):  # like methods and seeds: a repeat would silently merge into one job
            key = json.dumps(variant, sort_keys=True)
            if key in seen:
                raise ValueError(f"transfer.variants repeats a variant: [{seen[key]}] and [{i}] are both {key}")
            seen[key] = i
        return v

    @field_validator("hparams")
    @classmethod
    def _hp(cls, v):
        check_methods("transfer.hparams", list(v))
        for method, given in v.items():
            _check_hparams("transfer.hparams", method, given)
        return v

    @model_validator(mode="after")
    def _pairs_given(self) -> "TransferSection":
        if self.enabled and self.pairs == "explicit" and not self.explicit:
            raise ValueError("transfer.pairs='explicit' needs transfer.explicit = [[teacher, student], ...]")
        if self.enabled and self.pairs == "grid" and not (self.students and self.teachers):
            raise ValueError("transfer.pairs='grid' needs transfer.students and transfer.teachers (non-empty lists)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"transfer.seeds repeats a seed: {self.seeds}")
        stray = sorted(set(self.method_pairs) - set(self.methods))
        if stray:
            raise ValueError(f"transfer.method_pairs names {stray}, which are not in transfer.methods {self.methods}")
        too_many = {m: k for m, k in self.method_pairs.items() if self.pairs == "sample" and k > self.n_pairs}
        if too_many:
            raise ValueError(f"transfer.method_pairs {too_many} asks for more pairs than transfer.n_pairs = {self.n_pairs}")
        stray = [m for m in self.replicate.methods if m not in self.methods]
        if stray and self.replicate.n_pairs and self.replicate.seeds:
            raise ValueError(f"transfer.replicate.methods {stray} are not in transfer.methods {self.methods}")
        return self


class MultiTeacherSection(_Strict):
    enabled: bool = False
    students: list[str] = []
    teachers: list[str] = []
    modes: list[Literal["sequential", "parallel", "soup"]] = Field(list(MULTI_MODES), min_length=1)
    method: str = "kl_dp"
    order: Literal["ascending", "descending", "given"] = "ascending"
    epochs: int | None = Field(None, ge=1)  # per teacher; defaults to transfer.epochs
    single_baselines: bool = True  # also each teacher alone (same method, epochs): the paper's Tab 4 baseline
    # further multi-teacher objectives run from all teachers at once (parallel mode) beside the modes,
    # e.g. ["amtml_kd"] (adaptive per-instance teacher weights)
    parallel_methods: list[str] = []

    @field_validator("method")
    @classmethod
    def _method(cls, v):
        check_methods("multi_teacher.method", [v])
        return v

    @field_validator("parallel_methods")
    @classmethod
    def _parallel_methods(cls, v):
        check_methods("multi_teacher.parallel_methods", v)
        bad = [m for m in v if not get_method(m).multi_teacher]
        if bad:
            raise ValueError(f"multi_teacher.parallel_methods {bad} take one teacher at a time; multi-teacher "
                             f"methods: {', '.join(multi_teacher_methods())}")
        return v

    @model_validator(mode="after")
    def _fits(self) -> "MultiTeacherSection":
        if "parallel" in self.modes and not get_method(self.method).multi_teacher:
            raise ValueError(f"multi_teacher.method={self.method!r} cannot run mode 'parallel'; routing methods: "
                             f"{', '.join(multi_teacher_methods())} (or drop 'parallel' from multi_teacher.modes)")
        if self.enabled and not (self.students and self.teachers):
            raise ValueError("multi_teacher.enabled = true needs multi_teacher.students and multi_teacher.teachers")
        if self.enabled and any(len([t for t in self.teachers if t != s]) < 2 for s in self.students):
            raise ValueError("multi_teacher.teachers needs at least 2 teachers besides each student")
        return self


class HparamSection(_Strict):
    enabled: bool = False
    methods: list[str] = Field(["kl_dp"], min_length=1)
    n_pairs: int = Field(3, ge=1)
    grid: dict[str, list[Any]] = {}  # e.g. {lr = [1e-3, 1e-4], temperature = [1.0, 4.0]}; {} = the method's default grid
    epochs: int | None = Field(None, ge=1)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return check_methods("hparam_search.methods", v)

    @model_validator(mode="after")
    def _grids(self) -> "HparamSection":
        from zoo_study.methods.grids import check_grid_keys, grid_points

        for m in self.methods:
            spec = get_method(m)
            if self.grid:
                check_grid_keys(m, self.grid, spec.params)
                grid_points(self.grid)  # empty axes, repeated values
            elif not spec.grid:
                with_grid = [x.name for x in methods() if x.grid]
                raise ValueError(f"hparam_search.grid is empty and method {m!r} has no default grid; give a grid "
                                 f"or use a method with one: {', '.join(with_grid)}")
        return self
