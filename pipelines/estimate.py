"""Estimate a study's accelerator-hours from per-model throughput figures (``benchmarks/bench_gpu.py``).

Why: a study of 2,400 transfer jobs is planned in seconds, but whether it needs a day or a month of GPU
time depends on the models, on how the runner packs the jobs and on what the GPU waits for.
``zoo-study run CONFIG --dry-run --bench bench_gpu.json`` replays the runner's packing
(:func:`pipelines.packs.take_pack`, the config's ``ray.pack_size`` / ``pack_students`` /
``pack_gpu_memory_gb``) over the jobs still to run and charges each task (a pack, or a job alone) with

    I = images per epoch = steps x batch (steps = n // batch, full batches only; one batch of n when n <= batch),
        n = transfer_per_class x classes (when set), else the stratified transfer_fraction of each class
    train:   per member and phase, epochs x I / train_img_s(student)
    shared:  per task and phase, epochs x I x (sum over the phase's teachers of 1 / eval_img_s(teacher)
             + for each student of the task whose members need a frozen copy (registry flag needs_frozen)
               1 / eval_img_s(student)): done once per batch for the whole pack
    eval:    per member and phase, ceil(epochs / eval_every) x eval images / eval_img_s(student)
             (+ one pass for a soup); the predict stage: eval images / eval_img_s(model) per model
    decode:  ImageFolder without data.cache_dir: every image read is decoded (a pack decodes each batch
             once, each of its students' eval passes once) at decode_img_s x decode_workers; with a cache,
             each image of the transfer set(s) and of the eval split is decoded once, at the cache build
    start-up: startup_s per task (fresh worker process, torch / timm import, CUDA init, models, file index)

Sequential and soup jobs run one phase per teacher, parallel jobs one phase with every teacher.
Zoo, score and robustness jobs are not counted (small next to the transfers, or not measured by
bench_gpu.py). A bench row is found by the model's id, its timm name with or without the pretrained
tag (``resnet50.a1_in1k`` or ``resnet50``): the most specific name wins. A job with a model missing
from the file is left out and the missing models are named. Decode and start-up rates are documented
defaults (:class:`Overheads`) that the bench file's top-level keys of the same names override.
Planning-time only: torch is not imported (unless pack_gpu_memory_gb sizes the packs).
"""

from __future__ import annotations

import collections
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from zoo_study.data.spec import resolved_cache_dir

__all__ = ["Bench", "DataSizes", "Estimate", "Overheads", "batch_note", "data_sizes", "epoch_images", "estimate",
           "format_estimate", "load_bench", "transfer_images"]

TRANSFER_STAGES = ("transfer", "multi_teacher", "hparam")


@dataclass(frozen=True)
class Overheads:
    """What the GPU waits for besides its own work: documented defaults, each overridable by the bench
    file's top-level key of the same name (bench_gpu.py writes ``decode_img_s`` measured on its host)."""

    # PIL decode + resize of one ImageNet JPEG on one CPU core (issue 21: 100-200 img/s; bench_gpu.py measures it)
    decode_img_s: float = 150.0
    # processes decoding for one task: the transfer loop decodes in its main thread (raw_loader num_workers=0),
    # not overlapped with the GPU, so decode time adds to the task's; set it to the loader's workers if changed
    decode_workers: float = 1.0
    # per GPU task: a fresh process (max_calls=1), torch / timm import, CUDA init, model loading and the
    # ImageFolder file index (issue 21: 20-40 s on local SSD, minutes on network storage)
    startup_s: float = 30.0


@dataclass(frozen=True)
class Bench:
    """bench_gpu.py's per-model rows, indexed by every name a study may use for a model."""

    rows: Mapping[str, Mapping[str, Any]]
    device: str
    overheads: Overheads = Overheads()
    batch: int | None = None  # the training batch the rates were measured at (bench_gpu.py's --batch)

    def row(self, payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The row of a job's model payload: by model id, then timm name as given, then untagged name."""
        for name in _names(payload):
            if name in self.rows:
                return self.rows[name]
        return None


def _untagged(name: str) -> str:
    """``resnet50.a1_in1k`` -> ``resnet50`` (timm's pretrained tag follows the first dot)."""
    return name.split(".", 1)[0]


def _names(payload: Mapping[str, Any]) -> list[str]:
    """The names to try for a model, most specific first: its id (a random teacher's without ``random__``),
    its timm name, then their untagged forms, then an adapted model's base model's names. The timm name
    only when the spec sets no model_kwargs: an embedded recipe's ``resnet10t`` at 16 channels is not
    timm's ``resnet10t``."""
    spec = payload.get("spec") or {}
    model_id = payload.get("model_id")
    given = [model_id, model_id.removeprefix("random__") if isinstance(model_id, str) else None]
    if not spec.get("model_kwargs"):
        given += [spec.get("arch"), spec.get("id")]
    given = [n for n in given if isinstance(n, str) and n]
    base = _names(spec["base"]) if isinstance(spec.get("base"), Mapping) else []  # an adapted model: its base's
    return list(dict.fromkeys([*given, *(_untagged(n) for n in given), *base]))


def _model_name(payload: Mapping[str, Any]) -> str:
    return str(payload.get("model_id") or (payload.get("spec") or {}).get("arch") or "?")


def load_bench(path: str | Path) -> Bench:
    """A bench_gpu.py JSON file: rows by their name (and by their untagged name when no row has it)."""
    try:
        data = json.loads(Path(path).read_text())
        rows: dict[str, Mapping[str, Any]] = {}
        for r in data["models"]:
            if r.get("oom"):
                continue  # out of memory at the bench's batch: no rate, the model counts as missing
            for key in ("train_img_s", "eval_img_s"):
                if not (math.isfinite(float(r[key])) and float(r[key]) > 0):
                    raise ValueError(f"model {r['model']!r}: {key}={r[key]!r} must be a number > 0")
            rows[str(r["model"])] = r
        over = {f.name: float(data[f.name]) for f in fields(Overheads) if data.get(f.name) is not None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--bench {str(path)!r} is not a bench_gpu.py JSON file: {exc}") from None
    bad = {k: v for k, v in over.items() if not (math.isfinite(v) and (v > 0 or k == "startup_s" and v >= 0))}
    if bad:
        raise ValueError(f"--bench {str(path)!r}: {bad} must be finite numbers > 0 (startup_s >= 0)")
    for name, r in list(rows.items()):  # a tagged row also answers for its untagged name (exact names first)
        rows.setdefault(_untagged(name), r)
    device = f"{data.get('device', '?')} ({data.get('device_name', '?')})"
    batch = data.get("batch")
    return Bench(rows, device, replace(Overheads(), **over), int(batch) if isinstance(batch, (int, float)) else None)


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class DataSizes:
    """The study's data as the estimate needs it."""

    train_per_class: tuple[int, ...]  # train images of each (non-empty) class
    n_eval: int
    decoded: bool = False  # ImageFolder: images are JPEG files (decoded on read, or once into the cache)
    cached: bool = False  # ImageFolder with data.cache_dir: decoded once, at the cache build


def _balanced(n: int, classes: int) -> tuple[int, ...]:
    """Per-class counts of ``n`` labels ``i % classes`` (the generated data's balanced labels)."""
    return tuple(n // classes + (1 if c < n % classes else 0) for c in range(classes))


def _count_images(split_dir: Path) -> list[int]:
    """Image files of each non-empty class folder (as zoo_study.data.imagefolder indexes them)."""
    from zoo_study.data.imagefolder import IMAGE_SUFFIXES

    counts = []
    with os.scandir(split_dir) as classes:
        for d in sorted(classes, key=lambda e: e.name):
            if d.name.startswith(".") or not d.is_dir():
                continue
            with os.scandir(d.path) as files:
                n = sum(1 for f in files if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES and f.is_file())
            if n:
                counts.append(n)
    return counts


def data_sizes(cfg) -> DataSizes:
    """Per-class train counts and eval count of the study's data: the generated spec, or the folders."""
    if cfg.data.kind == "generated":
        g = cfg.data.generated
        return DataSizes(_balanced(g.n_train, g.num_classes), g.n_eval)
    root = Path(cfg.data.resolved_root()).expanduser()
    # the image cache is on unless data.cache_dir = "none" (unset: the node-local default folder)
    return DataSizes(tuple(_count_images(root / "train")), sum(_count_images(root / "val")), decoded=True,
                     cached=resolved_cache_dir(cfg.data) is not None)


def transfer_images(config: Mapping[str, Any], sizes: DataSizes) -> int:
    """Images of a job's transfer set, as zoo_study.data.subsets.stratified_indices draws it."""
    per_class = config.get("transfer_per_class")
    if per_class:
        return int(per_class) * len(sizes.train_per_class)
    f = float(config["transfer_fraction"])
    return sum(max(1, int(math.floor(n * f + 0.5))) for n in sizes.train_per_class)


def epoch_images(n: int, batch: int) -> int:
    """Images trained per epoch: full batches only when n > batch (drop_last), else one batch of n."""
    return n if n <= batch else (n // batch) * batch


# -------------------------------------------------------------------------------------------- estimate
@dataclass
class Estimate:
    """Seconds per term, tasks and jobs counted, and the jobs left out by missing model."""

    train_s: float = 0.0
    eval_s: float = 0.0
    shared_s: float = 0.0
    decode_s: float = 0.0
    startup_s: float = 0.0
    predict_s: float = 0.0
    tasks: int = 0
    jobs: int = 0
    missing: collections.Counter = field(default_factory=collections.Counter)  # model -> jobs left out
    left_out: int = 0

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.shared_s + self.decode_s + self.startup_s + self.predict_s

    @property
    def hours(self) -> float:
        return self.total_s / 3600.0


def _rate(bench: Bench, payload: Mapping[str, Any], key: str) -> float:
    return float(bench.row(payload)[key])  # type: ignore[index]


def _missing(bench: Bench, job) -> list[str]:
    payloads = [job.spec["model"]] if "model" in job.spec else [job.spec["student"], *job.spec["teachers"]]
    return [_model_name(p) for p in payloads if bench.row(p) is None]


def _phases(config: Mapping[str, Any], teachers: list) -> list[list]:
    """The teachers of each training phase: one phase per teacher for sequential / soup, else one."""
    return [[t] for t in teachers] if config["mode"] in ("sequential", "soup") else [list(teachers)]


def _task(members: Sequence, bench: Bench, sizes: DataSizes, est: Estimate) -> None:
    """Charge one task (a pack's members, or one job): see the module docstring for the terms."""
    from zoo_study.methods import get_method

    first = members[0].spec
    c = first["config"]
    images = epoch_images(transfer_images(c, sizes), int(c["batch_size"]))
    epochs, evals = int(c["epochs"]), math.ceil(int(c["epochs"]) / int(c.get("eval_every", 1)))
    students = {m.spec["student"]["model_id"]: m.spec["student"] for m in members}
    frozen = {m.spec["student"]["model_id"] for m in members if get_method(m.spec["config"]["method"]).needs_frozen}
    phases = _phases(c, first["teachers"])
    soup = 1 if c["mode"] == "soup" else 0
    for teachers in phases:
        for m in members:
            est.train_s += epochs * images / _rate(bench, m.spec["student"], "train_img_s")
            est.eval_s += evals * sizes.n_eval / _rate(bench, m.spec["student"], "eval_img_s")
        per_image = sum(1.0 / _rate(bench, t, "eval_img_s") for t in teachers)
        per_image += sum(1.0 / _rate(bench, students[s], "eval_img_s") for s in frozen)
        est.shared_s += epochs * images * per_image
    est.eval_s += soup * sum(sizes.n_eval / _rate(bench, m.spec["student"], "eval_img_s") for m in members)
    if sizes.decoded and not sizes.cached:  # batches decoded once per pack; eval once per student pass
        decoded = len(phases) * (epochs * images + evals * sizes.n_eval * len(students)) + soup * sizes.n_eval
        est.decode_s += decoded / _decode_rate(bench)


def _decode_rate(bench: Bench) -> float:
    return bench.overheads.decode_img_s * bench.overheads.decode_workers


def _cache_build(jobs: Iterable, sizes: DataSizes, bench: Bench) -> float:
    """Seconds to decode each image of the distinct transfer sets and of the eval split once."""
    sets = {(j.spec["config"].get("transfer_per_class"), j.spec["config"]["transfer_fraction"],
             j.spec["config"].get("subset_seed", 0)): transfer_images(j.spec["config"], sizes)
            for j in jobs if "config" in j.spec}
    return (sum(sets.values()) + sizes.n_eval) / _decode_rate(bench)


def estimate(jobs: Sequence, bench: Bench, sizes: DataSizes, *, pack_size: int = 1, pack_students: int = 1,
             pack_memory_bytes: float = 0.0) -> Estimate:
    """The accelerator seconds of ``jobs`` (predict and transfer-like stages), packed as the runner would."""
    from pipelines.packs import take_pack

    est = Estimate()
    counted = []
    for job in jobs:
        if job.stage != "predict" and "config" not in job.spec:
            continue  # zoo / score / semantics / robustness: not counted
        miss = _missing(bench, job)
        if miss:
            est.missing.update(dict.fromkeys(miss, 1))
            est.left_out += 1
        else:
            counted.append(job)
    est.jobs = len(counted)
    for stage in dict.fromkeys(j.stage for j in counted):
        todo = collections.deque((j, 1) for j in counted if j.stage == stage)
        while todo:
            job, _ = todo.popleft()
            est.tasks += 1
            est.startup_s += bench.overheads.startup_s
            if job.stage == "predict":
                est.predict_s += sizes.n_eval / _rate(bench, job.spec["model"], "eval_img_s")
                if sizes.decoded and not sizes.cached:
                    est.decode_s += sizes.n_eval / _decode_rate(bench)
                continue
            group = take_pack(job, todo, pack_size, max_groups=pack_students, memory_budget=pack_memory_bytes)
            _task(group, bench, sizes, est)
    if sizes.decoded and sizes.cached and counted:
        est.decode_s += _cache_build(counted, sizes, bench)
    return est


def format_estimate(est: Estimate, device: str, source: str, batch_note: str = "") -> list[str]:
    """The lines --dry-run prints: the total, then each term, then what was left out."""
    h = 3600.0
    lines = [f"estimated accelerator time of the planned predict and transfer jobs still to run: {est.hours:.2f} h "
             f"({est.total_s:.1f} s) on {device} ({est.jobs} job(s) in {est.tasks} task(s))",
             f"  train {est.train_s / h:.2f} h, eval {est.eval_s / h:.2f} h, shared forwards (teacher, frozen "
             f"student; once per pack) {est.shared_s / h:.2f} h, predict {est.predict_s / h:.2f} h, "
             f"decode {est.decode_s / h:.2f} h, start-up {est.startup_s / h:.2f} h"]
    if est.missing:
        names = ", ".join(sorted(est.missing))
        lines.append(f"  {est.left_out} job(s) left out: model(s) missing from {source}: {names}")
    if batch_note:
        lines.append(f"  {batch_note}")
    return lines


def batch_note(bench: Bench, jobs: Iterable) -> str:
    """A warning when the bench's training batch differs from the jobs' (rates and memory depend on it)."""
    batches = sorted({int(j.spec["config"]["batch_size"]) for j in jobs if "config" in j.spec})
    if bench.batch is None or not batches or batches == [bench.batch]:
        return ""
    return (f"note: the rates were measured at batch {bench.batch}, the jobs train at batch "
            f"{', '.join(map(str, batches))} (rerun bench_gpu.py --config CONFIG)")
