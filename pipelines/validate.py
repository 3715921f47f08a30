"""One validation pass over a resolved study, before Ray starts or anything is written.

Why a pass of its own: loading the config checks each value alone (types, ranges, method names and
hyper-parameters); what can only be checked against the whole study is checked here, once: model ids
named by pairs and multi-teacher lists exist in the zoo, every transfer config the planners will build
(read from the Study: the very grids the planners cross with the pairs) validates with a finite, sane lr,
timm architectures exist, Talking Models' split fits every model it may pair, the robustness stage has
transfers to measure, and the stages asked for have their inputs. Checks against the machine and the
file system (GPU, per-job resources, dataset roots, the image cache, a CLIP folder) live in
:mod:`pipelines.validate_resources`. Every problem is a :class:`~zoo_study.config.ConfigError` with one
line naming the key, the value and what is valid, so the CLI exits with code 2 and nothing half-written.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from pipelines import validate_resources as res
from pipelines.stages import get_stage, stage_names
from pipelines.study import Study
from pipelines.validate_maps import check_map_methods
from zoo_study.config import ConfigError, StudyConfig

__all__ = ["validate_study", "check_stage_inputs", "MAX_BASE_LR"]

# an SGD learning rate (for batch 256) above this diverges for any network the study trains; larger
# values are typing slips (lr_scale = 1e308) that would train to NaN and waste the job
MAX_BASE_LR = 10.0


def _known_ids(key: str, ids: list[str], models: list[str]) -> None:
    bad = [m for m in dict.fromkeys(ids) if m not in models]
    if bad:
        shown = ", ".join(models[:12]) + (" ..." if len(models) > 12 else "")
        raise ConfigError(f"{key}: model id(s) {bad} are not in the study's zoo; valid: {shown}")


def _timm():
    import zoo_study  # noqa: F401  (torchvision compat before timm)
    import timm

    from zoo_study.zoo import archs  # noqa: F401  (the embedded zoo's own architectures)

    return timm


def _check_timm_arch(key: str, arch: str) -> None:
    """``arch`` (with or without a pretrained tag) names a timm architecture; hub names are not checked
    here (they need the network)."""
    timm = _timm()
    source, name = timm.models.parse_model_name(arch)
    if source or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{key}: arch {arch!r} is not a timm architecture (see timm.list_models()){hint}")


def _check_models(study: Study) -> list[str]:
    """Local checkpoints exist and architectures are timm's; the trained models' ids."""
    cfg = study.cfg
    for m in cfg.zoo.models:
        if m.checkpoint and m.source in ("local", "embedded") and not Path(m.checkpoint).expanduser().is_file():
            raise ConfigError(f"zoo.models entry {m.model_id!r}: checkpoint {m.checkpoint!r} is not a file")
        if m.arch:
            _check_timm_arch(f"zoo.models entry {m.model_id!r}", m.arch)
    for m in study.models:  # random teachers named by a timm architecture rather than an embedded recipe
        if not m.trained and m.spec.get("data_config") is None and not _timm().is_model(m.spec["arch"].split(".")[0]):
            raise ConfigError(f"zoo.random_teachers: {m.spec['arch']!r} is neither an embedded recipe id nor a timm "
                              f"architecture (see `zoo-study zoo` and timm.list_models())")
    return [m.model_id for m in study.models if m.trained]


def _check_lr(tconf: dict[str, Any]) -> None:
    """The lr a job trains with is finite and sane (a huge lr_scale overflows or diverges to NaN)."""
    lr = tconf["base_lr"]
    if not (math.isfinite(lr) and 0 < lr <= MAX_BASE_LR):
        variant = f" (variant {tconf['variant']})" if tconf.get("variant") else ""
        raise ConfigError(f"{tconf['study_part']} job of method {tconf['method']!r}{variant}: lr {lr:g} (the method's "
                          f"lr x transfer.lr_scale {tconf.get('lr_scale', 1.0):g}, or as given) is outside "
                          f"(0, {MAX_BASE_LR:g}]; lower transfer.lr_scale or the method's lr")


def _check_robustness(cfg: StudyConfig) -> None:
    """``robustness.methods`` must name methods the study transfers with, or the stage plans nothing."""
    rb, t, mt = cfg.robustness, cfg.transfer, cfg.multi_teacher
    if not (rb.enabled and rb.methods):
        return
    planned = [*(t.methods if t.enabled else []), *([mt.method, *mt.parallel_methods] if mt.enabled else [])]
    stray = [m for m in rb.methods if m not in planned]
    if stray:
        raise ConfigError(f"robustness.methods {stray}: no transfer of these methods is planned; valid: methods of "
                          f"transfer.methods or multi_teacher ({', '.join(dict.fromkeys(planned)) or 'none planned'})")


def _check_inputs(cfg: StudyConfig, stages: list[str]) -> None:
    """Data, cache and encoder checks of the stages that will run (pipelines/validate_resources.py)."""
    res.check_cache_kind(cfg.data)
    res.check_cache_kind(cfg.zoo.adapt.pretrain_data, "zoo.adapt.pretrain_data")
    if any(get_stage(s).reads_data for s in stages):
        res.check_imagefolder(cfg.data)
    if cfg.zoo.adapt.enabled and "zoo" in stages:
        res.check_imagefolder(cfg.zoo.adapt.pretrain_data, "zoo.adapt.pretrain_data")
    if cfg.semantics.enabled and "semantics" in stages:
        res.check_text_encoder(cfg)


def validate_study(study: Study | StudyConfig, stages: list[str] | None = None, address: str | None = None, *,
                   machine: bool = True) -> None:
    """Raise ConfigError for the first problem of the study (see the module docstring); a bare config is
    made a :class:`Study` first.

    ``address``: the Ray address the run will use (None: a local instance, or ``RAY_ADDRESS``); what this
    machine has (GPU, CPUs, a writable cache folder) is checked only for a local run, and only with
    ``machine`` (a dry run plans for any machine: the CLI shows those problems as a warning)."""
    study = Study.from_config(study) if isinstance(study, StudyConfig) else study
    cfg = study.cfg
    stages = stage_names() if stages is None else stages
    ids = _check_models(study)
    if cfg.score.pairs == "explicit":
        _known_ids("score.explicit", [m for pair in cfg.score.explicit for m in pair], ids)
    t, mt = cfg.transfer, cfg.multi_teacher
    if t.enabled and t.pairs == "explicit":
        _known_ids("transfer.explicit", [m for pair in t.explicit for m in pair], ids)
    if t.enabled and t.pairs == "grid":
        _known_ids("transfer.students", t.students, ids)
        _known_ids("transfer.teachers", t.teachers, ids)
    if mt.enabled:
        _known_ids("multi_teacher.students", mt.students, ids)
        _known_ids("multi_teacher.teachers", mt.teachers, ids)
    for tconf in study.transfer_configs():  # the grids the planners read, each config resolved once
        _check_lr(tconf)
    _check_robustness(cfg)
    _check_inputs(cfg, stages)
    if machine:
        res.check_machine(cfg, address)
    if any(get_stage(s).runs_transfers for s in stages):
        # models whose feature maps (or Talking Models split) a map method cannot read, probed on the meta device
        check_map_methods(study)


def check_stage_inputs(cfg: StudyConfig, stages: list[str], plans: dict[str, Any]) -> None:
    """The stages asked for can start: one planned from the scores needs them on disk or the score stage
    in this run (otherwise it would be skipped, after the results root was created)."""
    unplanned = [s for s, jobs in plans.items() if jobs is None]
    if unplanned and "score" not in stages:
        upstream = stage_names()[:stage_names().index("score") + 1]  # what the scores are computed from
        first = [s for s in upstream if s not in stages]
        raise ConfigError(f"stage(s) {', '.join(unplanned)} are planned from scores/pairs.parquet, which "
                          f"{cfg.results_root()} does not have yet; run stage(s) {', '.join(first)} first "
                          f"(--stage {','.join(first)}) or add them to --stage")
