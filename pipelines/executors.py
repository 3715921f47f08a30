"""What each pipeline job does inside a worker: thin adapters from a job spec to library calls.

Executors receive their inputs as bytes (shared by the driver through Ray's object store), so workers
never need the results filesystem; they return ``{output name: table or bytes}`` (the names of the
job's ``outputs``, e.g. ``summary``/``epochs``/``predictions``) that the driver writes atomically.
Signature: ``fn(spec, inputs, ctx)``; ``ctx`` (:class:`~pipelines.jobs.JobContext`) carries the job id.
Heavy imports (torch, timm) happen here, inside workers, never in the CLI process.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pipelines.jobs import JobContext, read_input_table
from zoo_study.store import PREDICTION_SCHEMA, ResultsLayout
from zoo_study.zoo.study_model import study_model, weights_file

LOG = logging.getLogger("zoo_study.pipeline")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("study.device='cuda' but no CUDA device is visible to this worker")
    return name


def _source(data: dict[str, Any], ctx: JobContext, *, study: bool = True):
    """The job's dataset: the spec's ``data`` (a dumped :class:`DataSpec`, validated again here) plus the
    job's runtime settings (the decoded-image cache folder) and, for an ImageFolder spec without a root,
    the root the driver resolved (``study``: the study's data; else another dataset, e.g. adapt data,
    which falls back to the driver's ``$ZOO_STUDY_IMAGENET``). Never this worker's environment: on a
    cluster it is not the driver's."""
    from pipelines.jobs import RUNTIME_DATA_ROOT, RUNTIME_ENV_ROOT
    from zoo_study.data import DataSpec, load_source

    runtime = {k: v for k, v in ctx.runtime.items() if k in DataSpec.model_fields}
    spec = DataSpec.from_job(data, runtime)
    root = ctx.runtime.get(RUNTIME_DATA_ROOT if study else RUNTIME_ENV_ROOT)
    if spec.kind == "imagefolder" and spec.root is None and root:
        spec = spec.model_copy(update={"root": root})
    return load_source(spec)


def build_model(payload: dict[str, Any], inputs: dict[str, bytes], num_classes: int, device: str):
    """(model, CatalogRecord) for a model payload of a job spec, from the job's input bytes."""
    return study_model(payload).build(inputs, num_classes, device)


# -------------------------------------------------------------------------------------------- stages
def zoo_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table | bytes]:
    """Resolve one model (or train or adapt it, when it has weights of its own) -> its catalog row (and weights)."""
    from zoo_study.zoo.loading import load_model

    model = study_model(spec["model"])
    source = _source(spec["data"], ctx)
    out: dict[str, pa.Table | bytes] = {}
    if model.has_weights_file:
        def source_of(data: dict[str, Any], study: bool):
            return source if study and data == spec["data"] else _source(data, ctx, study=study)

        blob, seconds = model.make_weights(source_of, spec["data"], _device("auto"))
        with weights_file(blob) as path:
            _, record = load_model(model.ref(source.num_classes, path))
        record.checkpoint = ctx.outputs["weights"]
        record.train_seconds = seconds
        out["weights"] = blob
    else:
        _, record = load_model(model.ref(source.num_classes))
    out["model"] = record.to_table()
    return out


def predict_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
    """One model over the eval split -> predictions/model=<id>.parquet."""
    from zoo_study.data.preprocess import ModelPreprocess
    from zoo_study.predict import predict

    source = _source(spec["data"], ctx)
    device = _device(spec.get("device", "auto"))
    model, record = build_model(spec["model"], inputs, source.num_classes, device)
    from zoo_study.data import cached_split

    eval_split = cached_split(source.eval, [record.data_config])  # unchanged without a cache
    table = predict(model, eval_split, ModelPreprocess.from_data_config(record.data_config),
                    model_id=record.model_id, batch_size=int(spec["batch_size"]), device=device,
                    topk=int(spec["topk"]))
    return {"predictions": table}


def score_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
    """All selected pairs from the cached predictions -> scores/pairs.parquet, scores/pair_classes.parquet."""
    from zoo_study.scoring import PairSelection

    layout = ResultsLayout("")
    ids = list(spec["models"]) + list(spec["random_teachers"])
    preds = {m: read_input_table(inputs[str(layout.predictions(m))], PREDICTION_SCHEMA) for m in ids}
    selection = PairSelection.model_validate(spec["pairs"])  # the [score] section, dumped to JSON
    trained = {m: preds[m] for m in spec["models"]}
    pairs = selection.resolve(list(trained))
    keep = spec.get("pair_classes", {"keep": "all"})  # score.pair_classes; absent = every scored pair
    if spec.get("classes") == "present":  # a subset of a larger label space: count the study's classes
        from zoo_study.data.labels import class_ids_back, present_classes, to_dense

        classes = present_classes(preds)
        pairs_table, classes_table = _score_tables(to_dense(preds, classes), pairs, spec["random_teachers"], keep)
        return {"pairs": pairs_table, "pair_classes": class_ids_back(classes_table, classes)}
    pairs_table, classes_table = _score_tables(preds, pairs, spec["random_teachers"], keep)
    return {"pairs": pairs_table, "pair_classes": classes_table}


def _score_tables(preds, pairs, random_teachers, keep: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """The pair table of every selected pair and per-class counts only for the pairs ``keep`` names
    (``score.pair_classes``): all of them, none, or the transfer stage's pairs, given or drawn from this
    very pair table as the transfer planner draws them (:func:`pipelines.plan_transfers.sample_pairs_by_delta`)."""
    from zoo_study.scoring import align_predictions, score_pairs

    if keep["keep"] == "all":
        return score_pairs(preds, pairs, random_teachers=random_teachers)
    aligned = align_predictions(preds)  # once for both calls
    pairs_table, no_classes = score_pairs(aligned, pairs, random_teachers=random_teachers, with_classes=False)
    if keep["keep"] == "none":
        return pairs_table, no_classes
    if "sample" in keep:
        from pipelines.plan_transfers import sample_pairs_by_delta

        chosen = sample_pairs_by_delta(pairs_table, int(keep["sample"]["n"]), int(keep["sample"]["seed"]))
    else:
        chosen = [tuple(p) for p in keep["explicit"]]
    if not chosen:
        return pairs_table, no_classes
    return pairs_table, score_pairs(aligned, chosen)[1]


def semantics_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
    """Fig 2b: class text embeddings and, per scored pair and X, the similarity of its top-X% classes vs
    random class sets and the super-class share vs chance -> classes/embeddings.parquet,
    scores/pair_semantics.parquet."""
    from zoo_study.scoring.semantics import semantic_tables, text_encoder
    from zoo_study.store import PAIR_CLASS_SCHEMA, PAIR_SCHEMA

    layout = ResultsLayout("")
    pairs = read_input_table(inputs[str(layout.pairs)], PAIR_SCHEMA)
    pair_classes = read_input_table(inputs[str(layout.pair_classes)], PAIR_CLASS_SCHEMA)
    names, superclass_of, superclass_names = _class_info(spec["data"], ctx)
    st = spec["settings"]
    encoder = text_encoder(st["encoder"])
    LOG.info("semantics of %d pair(s) over %d classes with the %s encoder", pairs.num_rows, len(names), encoder.name)
    if spec.get("pair_classes"):  # score.pair_classes kept per-class counts only for some pairs: just those
        import pyarrow.compute as pc

        kept = pc.binary_join_element_wise(pair_classes.column("teacher"), pair_classes.column("student"), "\x1f")
        both = pc.binary_join_element_wise(pairs.column("teacher"), pairs.column("student"), "\x1f")
        pairs = pairs.filter(pc.is_in(both, value_set=pc.unique(kept)))
    emb, sem = semantic_tables(pairs, pair_classes, names, superclass_of, superclass_names, encoder,
                               random_sets=int(st["random_sets"]), seed=int(st["seed"]))
    return {"embeddings": emb, "pair_semantics": sem}


def _class_info(data: dict[str, Any], ctx: JobContext) -> tuple[list[str], list[int] | None, list[str] | None]:
    """Class names (and super-classes when known) of a data spec; generated data without rendering it."""
    from zoo_study.data.spec import DataSpec

    spec = DataSpec.model_validate(data)
    if spec.kind == "generated":
        from zoo_study.data.generated import class_table, superclasses

        sup, sup_names = superclasses(spec.generated)
        return [r[0] for r in class_table(spec.generated)], sup, sup_names
    source = _source(data, ctx)
    return list(source.class_names), source.superclass_of, source.superclass_names


def _cached_predictions(spec: dict[str, Any], inputs: dict[str, bytes]) -> dict[str, Any]:
    """The predict stage's eval predictions of the job's models (they spare the job its own passes)."""
    layout = ResultsLayout("")
    cached = {}
    for payload in [spec["student"], *spec["teachers"]]:
        key = str(layout.predictions(payload["model_id"]))
        if key in inputs:
            cached[payload["model_id"]] = read_input_table(inputs[key], PREDICTION_SCHEMA)
    return cached


def _transfer_inputs(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext):
    """A transfer spec's dataset, device, student, teachers and cached eval predictions (shared by the
    single-job and the pack executors)."""
    source = _source(spec["data"], ctx)
    device = _device(spec.get("device", "auto"))
    student = build_model(spec["student"], inputs, source.num_classes, device)
    if ctx.runtime.get("grad_checkpointing"):
        _checkpointed(student)
    teachers = [build_model(t, inputs, source.num_classes, device) for t in spec["teachers"]]
    return source, device, student, teachers, _cached_predictions(spec, inputs)


def _checkpointed(model_and_record) -> None:
    """Turn on timm's gradient checkpointing in a student whose transfer ran out of accelerator memory alone
    (``Job.runtime["grad_checkpointing"]``, set by the runner's OOM retry): activations are recomputed in
    the backward pass instead of kept. A model without it runs as it is (and fails again if it does not fit)."""
    model, record = model_and_record
    try:
        model.set_grad_checkpointing(True)
        LOG.info("%s: gradient checkpointing on (retry after running out of accelerator memory)", record.model_id)
    except (AttributeError, NotImplementedError, AssertionError) as exc:
        LOG.warning("%s: no gradient checkpointing (%s); retrying without it", record.model_id, exc)


def _run_transfer_spec(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext):
    from zoo_study.transfer import TransferConfig, run_transfer

    source, device, (student, s_rec), teachers, cached = _transfer_inputs(spec, inputs, ctx)
    config = TransferConfig.from_dict(spec["config"])
    LOG.info("transfer %s: %s -> %s", config.method, "+".join(r.model_id for _, r in teachers), s_rec.model_id)
    return run_transfer(student, s_rec, teachers, source, config, device=device, job_id=ctx.job_id,
                        cached_predictions=cached)


def _student_bytes(model) -> bytes:
    """The kept student's weights as safetensors bytes (the robustness stage reads them)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()})


def _transfer_tables(result, names) -> dict[str, Any]:
    """The outputs a transfer job declared (``names``), from its result; a method's own tables
    (:class:`~zoo_study.methods.registry.MethodTable`, e.g. AMTML-KD's teacher weights) are built by it."""
    from zoo_study.methods import get_method

    made = {"summary": lambda: result.summary, "epochs": lambda: result.epochs,
            "predictions": lambda: result.predictions, "student_weights": lambda: _student_bytes(result.model)}
    for table in get_method(result.row["method"]).tables:
        made[table.name] = lambda table=table: table.build(result)
    return {name: made[name]() for name in names}


def transfer_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, Any]:
    """One (teacher(s), student, method, hparams, seed) -> transfers/<job_id>/{summary,epochs,predictions}
    (and student.safetensors when the robustness stage is on)."""
    result = _run_transfer_spec(spec, inputs, ctx)
    return _transfer_tables(result, list(ctx.outputs))


multi_teacher_job = transfer_job


def hparam_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
    """One grid point on one pair -> hparams/<job_id>.parquet (a transfer summary row)."""
    return {"summary": _run_transfer_spec(spec, inputs, ctx).summary}


def _pack_students(members, inputs: dict[str, bytes], num_classes: int, device: str):
    """Each distinct student of a pack built once: ``(students, broken, cached)``: (model, record) by model
    id, the exception of each student that could not be built (its members fail, the others run), and the
    cached eval predictions of the students built."""
    students: dict[str, Any] = {}
    broken: dict[str, BaseException] = {}
    cached: dict[str, Any] = {}
    for m in members:
        sid = m.spec["student"]["model_id"]
        if sid in students or sid in broken:
            continue
        try:
            students[sid] = build_model(m.spec["student"], inputs, num_classes, device)
        except Exception as exc:  # noqa: BLE001 - that student's members fail, the others run
            broken[sid] = exc
            continue
        cached.update(_cached_predictions(m.spec, inputs))
    return students, broken, cached


def transfer_pack_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, Any]:
    """Several single-teacher transfers of one teacher (into one student, or several with
    ``ray.pack_students`` > 1) in one pass (pipelines/packs.py): one
    :class:`~pipelines.packs.MemberResult` per member, keyed by its job id. A member's failure is its own: a
    student that cannot be built fails its members only, and a member that fails in training or
    evaluation leaves the others' results unchanged (zoo_study/transfer/members.py)."""
    from pipelines.packs import MemberResult, carrier_members
    from zoo_study.transfer import TransferConfig
    from zoo_study.transfer.job import run_transfer_pack_students

    members = carrier_members(spec)
    first = members[0].spec
    source = _source(first["data"], ctx)
    device = _device(first.get("device", "auto"))
    teacher = build_model(first["teachers"][0], inputs, source.num_classes, device)  # shared: fails the pack
    students, broken, cached = _pack_students(members, inputs, source.num_classes, device)
    out = {m.job_id: MemberResult.failed(m.job_id, broken[m.spec["student"]["model_id"]])
           for m in members if m.spec["student"]["model_id"] in broken}
    run = [m for m in members if m.job_id not in out]
    if not run:
        return out
    configs = [TransferConfig.from_dict(m.spec["config"]) for m in run]
    LOG.info("transfer pack of %d (%s): %s -> %s", len(run), ", ".join(c.method for c in configs),
             teacher[1].model_id, ", ".join(students))
    results = run_transfer_pack_students([students[m.spec["student"]["model_id"]] for m in run], teacher,
                                         source, configs, device=device, job_ids=[m.job_id for m in run],
                                         cached_predictions=cached)
    for m, res in zip(run, results):
        out[m.job_id] = (MemberResult.failed(m.job_id, res) if isinstance(res, BaseException)
                         else MemberResult(m.job_id, _transfer_tables(res, m.outputs)))
    return out


def robustness_job(spec: dict[str, Any], inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
    """One student (the zoo model, or a transfer's kept student) -> robustness/<job_id>.parquet: clean,
    FGSM and I-FGSM accuracy per eps and the feature V-measure (zoo_study/robustness.py)."""
    import time

    import torch
    from safetensors.torch import load as load_bytes

    from zoo_study.data import cached_split
    from zoo_study.data.preprocess import ModelPreprocess
    from zoo_study.robustness import evaluate_robustness, feature_clustering, stratified_subset
    from zoo_study.store import ROBUSTNESS_SCHEMA, table_from_rows

    t0 = time.perf_counter()
    source = _source(spec["data"], ctx)
    device = _device(spec.get("device", "auto"))
    model, record = build_model(spec["model"], inputs, source.num_classes, device)
    transfer_id = spec.get("transfer_id")
    if transfer_id:
        key = str(ResultsLayout("").student_weights(transfer_id))
        model.load_state_dict(load_bytes(inputs[key]))
    st = spec["settings"]
    split = cached_split(source.eval, [record.data_config])
    idx = stratified_subset(split.labels, st.get("per_class"), st.get("subset_seed", 0))
    if len(idx) != len(split):
        split = split.subset(idx)
    pre = ModelPreprocess.from_data_config(record.data_config)
    LOG.info("robustness of %s%s on %d samples, eps %s", record.model_id,
             f" after transfer {transfer_id}" if transfer_id else "", len(split), st["eps"])
    res = evaluate_robustness(model, split, pre, record.data_config, eps=st["eps"], steps=int(st["steps"]),
                              batch_size=int(st["batch_size"]), device=device)
    clus = feature_clustering(model, split, pre, num_classes=source.num_classes, seed=int(st.get("subset_seed", 0)),
                              batch_size=int(st["batch_size"]), device=device) if st.get("v_measure", True) else None
    dev = str(torch.device(device))
    rows = [{"job_id": ctx.job_id, "model_id": record.model_id, "transfer_id": transfer_id, "eps": float(e),
             "ifgsm_steps": int(st["steps"]), "n": res.n, "clean_acc": res.clean_acc, "fgsm_acc": res.fgsm_acc[e],
             "ifgsm_acc": res.ifgsm_acc[e], "v_measure": clus and clus.v_measure, "v_chance": clus and clus.v_chance,
             "ami": clus and clus.ami, "runtime_s": time.perf_counter() - t0, "device": dev}
            for e in st["eps"]]
    return {"robustness": table_from_rows(rows, ROBUSTNESS_SCHEMA)}
