"""The pipeline's data step: on the driver, after the zoo stage and before any stage that reads images.

Why here: it needs the study's models' data configs (the zoo stage's model rows) and the transfer sets
its jobs draw (their configs), and it must run once per run, on CPUs, before GPU tasks start
(:mod:`zoo_study.data.prepare` says what it builds and why).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from pipelines.stages import get_stage
from pipelines.study import Study
from zoo_study.config import StudyConfig
from zoo_study.store import MODEL_SCHEMA, ResultsLayout, read_parquet_checked

LOG = logging.getLogger("zoo_study.pipeline")

def needs_images(stages: Sequence[str]) -> bool:
    """Whether a group of stages reads the dataset's images (the data step must have run before it)."""
    return any(get_stage(s).reads_images for s in stages)


def _model_configs(study: Study, layout: ResultsLayout) -> list[dict[str, Any]]:
    """The data configs of the study's models whose zoo rows exist (a failed zoo job has none)."""
    rows = []
    for m in study.models:
        t = read_parquet_checked(layout.model_row(m.model_id), MODEL_SCHEMA)
        if t is not None and t.num_rows:
            rows.append(t.to_pylist()[0])
    return rows


def _subsets(cfg: StudyConfig, plans: Mapping[str, Any]):
    """The distinct train subsets the planned transfer jobs draw (and the study's own settings)."""
    from zoo_study.data.prepare import SubsetSpec

    configs = [cfg.transfer.settings()]
    for jobs in plans.values():
        configs += [j.spec["config"] for j in jobs or () if isinstance(j.spec.get("config"), dict)]
    out = []
    for c in configs:
        per_class = c.get("transfer_per_class")
        out.append(SubsetSpec(per_class=per_class, fraction=None if per_class else c.get("transfer_fraction", 0.1),
                              seed=int(c.get("subset_seed", 0))))
    return list(dict.fromkeys(out))


def prepare_study_data(study: Study, plans: Mapping[str, Any]) -> None:
    """Index the ImageFolder root and build the decoded-image cache of the eval split and the transfer
    sets at every model's geometry, once, here on the driver; nothing for generated data or with the
    cache off."""
    from zoo_study.data.prepare import prepare_images

    cfg, layout = study.cfg, study.layout
    if not cfg.data.cache_enabled:
        return
    subsets = _subsets(cfg, plans) if cfg.transfer.enabled or cfg.multi_teacher.enabled or cfg.hparam_search.enabled else []
    report = prepare_images(cfg.data, _model_configs(study, layout), subsets)
    if report is not None:
        LOG.info("data step: eval %d images, transfer sets %s, geometries %s in %.1f s", report.n_eval,
                 list(report.n_train.values()), ", ".join(report.geometries), report.seconds)
