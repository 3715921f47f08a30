"""Knowledge transfer between pretrained classifiers (METHOD.md sections 2-4).

- :mod:`~zoo_study.transfer.objectives`: the registry of objectives (kl, xe_kl, xe_kl_ls, kl_topk, kl_dp,
  kl_dp_unsup, xe_kl_mcl, cd, crd), one small function each.
- :mod:`~zoo_study.transfer.config`: :class:`TransferConfig`, validated, JSON round-trip.
- :mod:`~zoo_study.transfer.loop`: one training stage (augment once, per-model preprocessing, SGD,
  per-epoch evaluation, MCL slow weights, divergence check).
- :mod:`~zoo_study.transfer.runner`: :func:`run_transfer`, single and multi-teacher modes (sequential,
  parallel, soup) -> summary / epoch / prediction tables.
- :mod:`~zoo_study.transfer.hparams`: grid expansion and the best setting per method.

The pipeline calls::

    result = run_transfer(student, student_record, [(teacher, teacher_record)], source, config,
                          device="cuda", job_id=job_id)
    result.summary, result.epochs, result.predictions  # pyarrow tables in the store's schemas
"""

import zoo_study  # noqa: F401  (torchvision compat before timm)

from zoo_study.transfer.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    Param,
    cross_entropy,
    get_objective,
    kl_rows,
    kl_term,
    method_names,
    register_objective,
    route_sources,
)
from zoo_study.transfer.config import MODES, STUDENT_MODES, STUDY_PARTS, TEACHER_ORDERS, TransferConfig
from zoo_study.transfer.mcl import SlowWeights, interpolate_, soup_state_dicts
from zoo_study.transfer.loop import Runtime, TransferDiverged, predict_split, run_stage, stage_seeds
from zoo_study.transfer.runner import TransferResult, order_teachers, run_transfer, transfer_set
from zoo_study.transfer.hparams import (
    BEST_SCHEMA,
    DEFAULT_GRIDS,
    best_configs,
    best_per_method,
    expand_grid,
    expand_grids,
    grid_points,
)

__all__ = [
    "OBJECTIVES", "Objective", "ObjectiveInputs", "ObjectiveOutput", "Param", "cross_entropy", "get_objective",
    "kl_rows", "kl_term", "method_names", "register_objective", "route_sources",
    "MODES", "STUDENT_MODES", "STUDY_PARTS", "TEACHER_ORDERS", "TransferConfig",
    "SlowWeights", "interpolate_", "soup_state_dicts",
    "Runtime", "TransferDiverged", "predict_split", "run_stage", "stage_seeds",
    "TransferResult", "order_teachers", "run_transfer", "transfer_set",
    "BEST_SCHEMA", "DEFAULT_GRIDS", "best_configs", "best_per_method", "expand_grid", "expand_grids",
    "grid_points",
]
