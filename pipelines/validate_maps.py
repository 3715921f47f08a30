"""Validation of the methods that read feature maps (registry flag ``needs_maps``: AMTML-KD, Talking Models).

Why before anything runs: a model whose maps cannot be read as NCHW grids, or a Talking Models ``split``
deeper than a model's levels, used to be found in a worker (a crash, or worse a silently wrong map) after
the study had started. Here every model that may be a student or teacher of such a method is built by
timm on the ``meta`` device (full size, no weights, no compute) and probed at its input size by
:func:`zoo_study.transfer.feature_maps.maps_problem`; the first problem is a ConfigError naming the model,
the method and why, so the CLI exits with code 2 and nothing is written. A model that timm cannot build
here is left to the other checks (and the zoo stage), which name it better.
"""

from __future__ import annotations

from typing import Any

from zoo_study.config import ConfigError, StudyConfig

__all__ = ["check_map_methods"]


def _map_methods(names: list[str]) -> list[str]:
    from zoo_study.methods import get_method

    return [m for m in dict.fromkeys(names) if get_method(m).needs_maps]


def _splits(cfg: StudyConfig, method: str, points: list[dict[str, Any]] | None = None) -> list[int | None]:
    """The Talking Models splits the planner will use for ``method`` (None for other methods)."""
    from pipelines.stages import _transfer_config

    if method != "talking_models":
        return [None]
    out = [_transfer_config(cfg, method, cfg.transfer.seeds[0], hparams=p)["hparams"].get("split")
           for p in (points or [None])]
    return list(dict.fromkeys(out))


def _uses(cfg: StudyConfig, all_ids: list[str]) -> list[tuple[str, str, list[str], list[int | None]]]:
    """(config key, method, model ids, splits) for every stage that runs a map method."""
    t, mt, hs = cfg.transfer, cfg.multi_teacher, cfg.hparam_search
    out = []
    if t.enabled:
        if t.pairs == "explicit":
            ids = [m for pair in t.explicit for m in pair]
        elif t.pairs == "grid":
            ids = [*t.students, *t.teachers]
        else:  # paper lists or pairs drawn from scores: any model of the zoo may be drawn
            ids = all_ids
        out += [("transfer.methods", m, ids, _splits(cfg, m)) for m in _map_methods(list(t.methods))]
    if mt.enabled:
        out += [("multi_teacher", m, [*mt.students, *mt.teachers], _splits(cfg, m))
                for m in _map_methods([mt.method, *mt.parallel_methods])]
    if hs.enabled:
        from zoo_study.methods import default_grid
        from zoo_study.methods.grids import grid_points

        for m in _map_methods(list(hs.methods)):
            out.append(("hparam_search.methods", m, all_ids, _splits(cfg, m, grid_points(hs.grid or default_grid(m)))))
    return out


def _build_args(kind: str, spec: dict[str, Any]) -> tuple[str | None, dict[str, Any], list[int] | None]:
    """(arch, model kwargs, input size or None for timm's default) of a model plan."""
    if kind == "adapted":
        return _build_args(spec["base"]["kind"], spec["base"]["spec"])
    if kind == "embedded":
        return spec["arch"], dict(spec.get("model_kwargs", {})), [3, spec["input_size"], spec["input_size"]]
    arch, kwargs, data = spec.get("arch"), dict(spec.get("model_kwargs") or {}), dict(spec.get("data_config") or {})
    if spec.get("checkpoint") and not arch:
        from zoo_study.zoo.loading import read_checkpoint_metadata

        try:
            meta = read_checkpoint_metadata(spec["checkpoint"])
        except Exception:  # a bad file is the loader's to report
            return None, {}, None
        arch, kwargs = meta.get("arch"), {**meta.get("model_kwargs", {}), **kwargs}
        data = {**meta.get("data_config", {}), **data}
    if spec.get("num_classes"):
        kwargs["num_classes"] = spec["num_classes"]
    return arch, kwargs, data.get("input_size")


def _meta_model(kind: str, spec: dict[str, Any]):
    """The plan's architecture on the meta device and its input size, or None when timm cannot build it."""
    import torch

    import zoo_study.zoo.archs  # noqa: F401  (the embedded MLP archs)
    import timm

    arch, kwargs, size = _build_args(kind, spec)
    if not arch:
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    except Exception:
        return None
    size = size or model.pretrained_cfg.get("input_size") or (3, 224, 224)
    return arch, model, tuple(int(v) for v in size)


def check_map_methods(cfg: StudyConfig) -> None:
    """Raise ConfigError when a model may meet a map method whose maps (or split) it cannot give."""
    from pipelines.stages import study_models

    plans = {p.model_id: p for p in study_models(cfg)}
    uses = _uses(cfg, list(plans))
    if not uses:
        return
    from zoo_study.transfer.feature_maps import maps_problem

    built: dict[str, Any] = {}
    for key, method, ids, splits in uses:
        for mid in dict.fromkeys(ids):
            if mid not in plans:
                continue  # unknown ids are reported by the id checks
            if mid not in built:
                built[mid] = _meta_model(plans[mid].kind, plans[mid].spec)
            if built[mid] is None:
                continue
            arch, model, size = built[mid]
            for split in splits:
                try:
                    why = maps_problem(model, size, split=split, who="model")
                except Exception:  # the probe itself failed (an input size timm refuses): the zoo stage says why
                    why = None
                if why:
                    raise ConfigError(f"{key}: {method} needs feature maps, but model {mid!r} ({arch}) cannot give "
                                      f"them: {why}")
