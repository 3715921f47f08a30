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

from zoo_study.config import ConfigError

__all__ = ["check_map_methods"]


def _map_methods(names: list[str]) -> list[str]:
    from zoo_study.methods import get_method

    return [m for m in dict.fromkeys(names) if get_method(m).needs_maps]


def _splits(study: Any, method: str, points: list[dict[str, Any]] | None = None) -> list[int | None]:
    """The Talking Models splits the planner will use for ``method`` (None for other methods)."""
    if method != "talking_models":
        return [None]
    out = [study.transfer_config(method, study.cfg.transfer.seeds[0], hparams=p)["hparams"].get("split")
           for p in (points or [None])]
    return list(dict.fromkeys(out))


def _uses(study: Any, all_ids: list[str]) -> list[tuple[str, str, list[str], list[int | None]]]:
    """(config key, method, model ids, splits) for every stage that runs a map method."""
    cfg = study.cfg
    t, mt, hs = cfg.transfer, cfg.multi_teacher, cfg.hparam_search
    out = []
    if t.enabled:
        if t.pairs == "explicit":
            ids = [m for pair in t.explicit for m in pair]
        elif t.pairs == "grid":
            ids = [*t.students, *t.teachers]
        else:  # paper lists or pairs drawn from scores: any model of the zoo may be drawn
            ids = all_ids
        out += [("transfer.methods", m, ids, _splits(study, m)) for m in _map_methods(list(t.methods))]
    if mt.enabled:
        out += [("multi_teacher", m, [*mt.students, *mt.teachers], _splits(study, m))
                for m in _map_methods([mt.method, *mt.parallel_methods])]
    if hs.enabled:
        from zoo_study.methods import default_grid
        from zoo_study.methods.grids import grid_points

        for m in _map_methods(list(hs.methods)):
            out.append(("hparam_search.methods", m, all_ids, _splits(study, m, grid_points(hs.grid or default_grid(m)))))
    return out


def _meta_model(study_model: Any):
    """A study model's architecture on the meta device and its input size, or None when timm cannot build it."""
    import torch

    import zoo_study.zoo.archs  # noqa: F401  (the embedded MLP archs)
    import timm

    arch, kwargs, size = study_model.arch_args()
    if study_model.spec.get("num_classes"):  # a model entry's own class count
        kwargs = {**kwargs, "num_classes": study_model.spec["num_classes"]}
    if not arch:
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    except Exception:
        return None
    size = size or model.pretrained_cfg.get("input_size") or (3, 224, 224)
    return arch, model, tuple(int(v) for v in size)


def check_map_methods(study: Any) -> None:
    """Raise ConfigError when a model of the :class:`~pipelines.study.Study` may meet a map method whose maps
    (or split) it cannot give."""
    plans = study.by_id
    uses = _uses(study, list(plans))
    if not uses:
        return
    from zoo_study.transfer.feature_maps import maps_problem

    built: dict[str, Any] = {}
    for key, method, ids, splits in uses:
        for mid in dict.fromkeys(ids):
            if mid not in plans:
                continue  # unknown ids are reported by the id checks
            if mid not in built:
                built[mid] = _meta_model(plans[mid])
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
