"""Estimate a study's accelerator-hours from per-model throughput figures (``benchmarks/bench_gpu.py``).

Why: a study of 2,400 transfer jobs is planned in seconds, but whether it needs a day or a month of GPU
time depends on the models. ``zoo-study run CONFIG --dry-run --bench bench_gpu.json`` multiplies each
planned transfer's work by the measured rates of its models:

    training:   epochs x transfer images x (1/train_rate(student) + sum 1/eval_rate(teacher)
                                             [+ 1/eval_rate(student) for the frozen anchor of KL+DP])
    evaluation: evaluations x eval images / eval_rate(student)

per training phase (sequential and soup jobs run one phase per teacher). Models are looked up by id,
then by architecture; a model missing from the file makes its jobs count as unknown (reported).
Planning-time only: torch is not imported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["load_rates", "estimate_hours", "split_sizes"]


def load_rates(path: str | Path) -> tuple[dict[str, dict], str]:
    """``({model id or arch: row}, device description)`` from a bench_gpu.py JSON file."""
    try:
        data = json.loads(Path(path).read_text())
        rows = {r["model"]: r for r in data["models"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--bench {str(path)!r} is not a bench_gpu.py JSON file: {exc}") from None
    return rows, f"{data.get('device', '?')} ({data.get('device_name', '?')})"


def split_sizes(cfg) -> tuple[int, int]:
    """(train, eval) image counts of the study's data: the generated spec, or the ImageFolder's files."""
    if cfg.data.kind == "generated":
        return cfg.data.generated.n_train, cfg.data.generated.n_eval
    root = Path(cfg.data.resolved_root())
    counts = []
    for split in ("train", "val"):
        counts.append(sum(1 for d in (root / split).iterdir() if d.is_dir() for f in d.iterdir() if f.is_file()))
    return counts[0], counts[1]


def _rate(rows: Mapping[str, dict], payload: Mapping[str, Any], key: str) -> float | None:
    spec = payload.get("spec", {})
    for name in (payload.get("model_id"), spec.get("arch"), spec.get("id")):
        if name and name in rows:
            return float(rows[name][key])
    return None


def estimate_hours(jobs: Sequence[Any], rows: Mapping[str, dict], n_train_total: int, n_eval: int,
                   num_classes: int | None = None) -> tuple[float, int]:
    """(hours of the jobs whose models are all in ``rows``, number of jobs left out as unknown)."""
    seconds, unknown = 0.0, 0
    for job in jobs:
        spec = job.spec
        if "config" not in spec:
            continue  # zoo / predict / score: small next to the transfers
        c = spec["config"]
        if c.get("transfer_per_class") and num_classes:
            n_train = c["transfer_per_class"] * num_classes
        else:
            n_train = round(n_train_total * c["transfer_fraction"])
        s_train = _rate(rows, spec["student"], "train_img_s")
        s_eval = _rate(rows, spec["student"], "eval_img_s")
        t_eval = [_rate(rows, t, "eval_img_s") for t in spec["teachers"]]
        if s_train is None or s_eval is None or any(r is None for r in t_eval):
            unknown += 1
            continue
        phases = len(t_eval) if c["mode"] in ("sequential", "soup") else 1
        per_phase_teachers = [[r] for r in t_eval] if phases > 1 else [t_eval]
        frozen = 1.0 / s_eval if c["method"].startswith("kl_dp") else 0.0
        evals = math.ceil(c["epochs"] / c.get("eval_every", 1))
        for teachers in per_phase_teachers:
            per_image = 1.0 / s_train + sum(1.0 / r for r in teachers) + frozen
            seconds += c["epochs"] * n_train * per_image + evals * n_eval / s_eval
    return seconds / 3600.0, unknown
