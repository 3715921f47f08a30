"""Knowledge transfer between pretrained classifiers (METHOD.md sections 2-4).

- :mod:`zoo_study.methods`: the registry of methods (objectives, parameters, labels, grids); torch-free.
- :mod:`~zoo_study.transfer.config`: :class:`TransferConfig`, validated and resolved; torch-free.
- :mod:`~zoo_study.transfer.phase`: one training phase, alone or as a pack sharing its batches (augment
  once, per-model preprocessing, SGD, per-epoch evaluation, the method's state hooks, divergence check);
  :mod:`~zoo_study.transfer.members`: one pack member and its own failure; :mod:`~zoo_study.transfer.loop`:
  the runtime, forwards and per-epoch records they run on.
- :mod:`~zoo_study.transfer.job`: :func:`run_transfer`, single and multi-teacher modes (sequential,
  parallel, soup), packs; :mod:`~zoo_study.transfer.result`: the summary / epoch / prediction tables.
- :mod:`~zoo_study.transfer.hparams`: the best setting per method from a grid's results.

The pipeline calls::

    result = run_transfer(student, student_record, [(teacher, teacher_record)], source, config,
                          device="cuda", job_id=job_id)
    result.summary, result.epochs, result.predictions  # pyarrow tables in the store's schemas

Names are imported lazily (PEP 562), so ``zoo_study.transfer.config`` can be used without torch.
"""

from __future__ import annotations

from zoo_study._lazy import lazy_exports

_EXPORTS = {
    "ObjectiveInputs": "zoo_study.methods.registry",
    "ObjectiveOutput": "zoo_study.methods.registry",
    "Param": "zoo_study.methods.registry",
    "get_method": "zoo_study.methods.registry",
    "method_names": "zoo_study.methods.registry",
    "register_method": "zoo_study.methods.registry",
    "cross_entropy": "zoo_study.methods.losses",
    "kl_rows": "zoo_study.methods.losses",
    "kl_term": "zoo_study.methods.losses",
    "route_sources": "zoo_study.methods.losses",
    "MODES": "zoo_study.transfer.config",
    "STUDENT_MODES": "zoo_study.transfer.config",
    "STUDY_PARTS": "zoo_study.transfer.config",
    "TEACHER_ORDERS": "zoo_study.transfer.config",
    "TransferConfig": "zoo_study.transfer.config",
    "TransferSettings": "zoo_study.transfer.config",
    "SlowWeights": "zoo_study.transfer.mcl",
    "interpolate_": "zoo_study.transfer.mcl",
    "soup_state_dicts": "zoo_study.transfer.mcl",
    "Runtime": "zoo_study.transfer.loop",
    "TransferDiverged": "zoo_study.transfer.loop",
    "predict_split": "zoo_study.transfer.loop",
    "run_phase": "zoo_study.transfer.phase",
    "run_phase_pack": "zoo_study.transfer.phase",
    "phase_seeds": "zoo_study.transfer.loop",
    "TransferResult": "zoo_study.transfer.result",
    "run_transfer_pack": "zoo_study.transfer.job",
    "order_teachers": "zoo_study.transfer.inputs",
    "run_transfer": "zoo_study.transfer.job",
    "transfer_set": "zoo_study.transfer.inputs",
    "BEST_SCHEMA": "zoo_study.transfer.hparams",
    "best_per_method": "zoo_study.transfer.hparams",
    "grid_points": "zoo_study.methods.grids",
}

__all__ = sorted(_EXPORTS)


_TORCH_FREE = ("zoo_study.transfer.config", "zoo_study.methods.registry")


def _compat_first(module: str) -> None:
    if module not in _TORCH_FREE:
        import zoo_study  # noqa: F401  (torchvision compat before timm)


__getattr__ = lazy_exports("zoo_study.transfer", _EXPORTS, before=_compat_first)
