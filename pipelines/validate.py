"""One validation pass over a resolved study, before Ray starts or anything is written.

Why a pass of its own: loading the config checks each value alone (types, ranges, method names and
hyper-parameters); what can only be checked against the whole study is checked here, once: model ids
named by pairs and multi-teacher lists exist in the zoo, every transfer config the planner will build
validates (each method x seed, each multi-teacher mode, each grid point), the dataset root is a folder
with the expected splits, local checkpoints exist, and random-teacher architectures are known to timm.
Every problem is a :class:`~zoo_study.config.ConfigError` with one line naming the key, the value and
what is valid, so the CLI exits with code 2 and nothing half-written.
"""

from __future__ import annotations

from pathlib import Path

from zoo_study.config import ConfigError, StudyConfig

__all__ = ["validate_study"]


def _known_ids(key: str, ids: list[str], models: list[str]) -> None:
    bad = [m for m in dict.fromkeys(ids) if m not in models]
    if bad:
        shown = ", ".join(models[:12]) + (" ..." if len(models) > 12 else "")
        raise ConfigError(f"{key}: model id(s) {bad} are not in the study's zoo; valid: {shown}")


def _check_models(cfg: StudyConfig) -> list[str]:
    from pipelines.stages import study_models

    plans = study_models(cfg)  # raises on repeated ids
    ids = [p.model_id for p in plans if p.kind != "random"]
    for m in cfg.zoo.models:
        if m.checkpoint and m.source in ("local", "embedded") and not Path(m.checkpoint).expanduser().is_file():
            raise ConfigError(f"zoo.models entry {m.model_id!r}: checkpoint {m.checkpoint!r} is not a file")
    unknown_archs = [p.spec["arch"] for p in plans if p.kind == "random" and p.spec.get("data_config") is None]
    if unknown_archs:  # random teachers named by a timm architecture rather than an embedded recipe
        import zoo_study  # noqa: F401  (torchvision compat before timm)
        import timm

        for arch in unknown_archs:
            if not timm.is_model(arch.split(".")[0]):
                raise ConfigError(f"zoo.random_teachers: {arch!r} is neither an embedded recipe id nor a timm "
                                  f"architecture (see `zoo-study zoo` and timm.list_models())")
    return ids


def _check_data(cfg: StudyConfig) -> None:
    if cfg.data.kind != "imagefolder":
        return
    try:
        root = Path(cfg.data.resolved_root()).expanduser()
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if not root.is_dir():
        raise ConfigError(f"data.root={str(root)!r} is not a folder; expected a folder with train/ and val/ "
                          f"class folders (or set ZOO_STUDY_IMAGENET)")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise ConfigError(f"data.root={str(root)!r} has no {' or '.join(f'{m}/' for m in missing)} folder; "
                          f"expected train/ and val/ with one sub-folder per class")
    from zoo_study.data.spec import cache_dir_problem

    if problem := cache_dir_problem(cfg.data):
        raise ConfigError(problem)


def _check_transfer_configs(cfg: StudyConfig) -> None:
    from pipelines.stages import _transfer_config
    from zoo_study.methods import default_grid
    from zoo_study.methods.grids import grid_points

    t, mt, hs = cfg.transfer, cfg.multi_teacher, cfg.hparam_search
    if t.enabled:
        for method in t.methods:
            for seed in t.seeds:
                _transfer_config(cfg, method, seed)
    if mt.enabled:
        for mode in mt.modes:
            _transfer_config(cfg, mt.method, t.seeds[0], mode=mode, study_part="multi_teacher", epochs=mt.epochs,
                             order=mt.order)
    if hs.enabled:
        for method in hs.methods:
            for point in grid_points(hs.grid or default_grid(method)):
                _transfer_config(cfg, method, t.seeds[0], study_part="hparam", epochs=hs.epochs, hparams=point)


def validate_study(cfg: StudyConfig, stages: list[str] | None = None) -> None:
    """Raise ConfigError for the first problem of the study (see the module docstring)."""
    ids = _check_models(cfg)
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
    _check_transfer_configs(cfg)
    if stages is None or any(s in stages for s in ("transfer", "multi_teacher", "hparam")):
        from pipelines.validate_maps import check_map_methods

        check_map_methods(cfg)  # models whose feature maps (or Talking Models split) a map method cannot read
    if stages is None or any(s in stages for s in ("zoo", "predict", "transfer", "multi_teacher", "hparam")):
        _check_data(cfg)
