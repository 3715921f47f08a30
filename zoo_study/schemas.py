"""The Parquet schemas of every result table, and the constants their columns depend on.

Why a module of its own: the schemas are the contract between the stages that write results and the
analysis layer that reads them; they change for different reasons (a new column) than the catalogue and
the write rules of :mod:`zoo_study.store` (a new file kind, a new write path), and they are the longest
part of it. :mod:`zoo_study.store` re-exports every name here, so ``from zoo_study.store import
PAIR_SCHEMA`` keeps working and stays the usual spelling.

A column is renamed here, in one place; :data:`zoo_study.store.TABLES` ties each schema to its files and
its DuckDB view.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SCHEMA_VERSION", "TOP_X_PERCENTS", "MODEL_SCHEMA", "PREDICTION_SCHEMA", "PAIR_SCHEMA", "PAIR_CLASS_SCHEMA",
           "TRANSFER_SUMMARY_SCHEMA", "TRANSFER_EPOCH_SCHEMA", "TRANSFER_PREDICTION_SCHEMA", "FAILURE_SCHEMA",
           "ROBUSTNESS_SCHEMA", "CLASS_EMBEDDING_SCHEMA", "PAIR_SEMANTICS_SCHEMA"]

SCHEMA_VERSION = 1
TOP_X_PERCENTS: tuple[int, ...] = (2, 5, 20, 50, 100)

MODEL_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # timm | local | embedded | random
        pa.field("arch", pa.string(), nullable=False),  # timm architecture name
        pa.field("family", pa.string(), nullable=False),  # cnn | transformer | mlp
        pa.field("params_m", pa.float64(), nullable=False),
        pa.field("num_classes", pa.int32(), nullable=False),
        pa.field("input_size", pa.list_(pa.int32()), nullable=False),  # [C, H, W]
        pa.field("crop_pct", pa.float64(), nullable=False),
        pa.field("interpolation", pa.string(), nullable=False),
        pa.field("mean", pa.list_(pa.float64()), nullable=False),
        pa.field("std", pa.list_(pa.float64()), nullable=False),
        pa.field("reported_top1", pa.float64()),  # percent, nullable
        pa.field("checkpoint", pa.string()),  # local file, nullable
        pa.field("weights_id", pa.string()),  # content hash of the weights, nullable
        pa.field("recipe_json", pa.string()),  # training recipe of an embedded model, nullable
        pa.field("train_seconds", pa.float64()),  # nullable
    ]
)

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("pred", pa.int32(), nullable=False),
        pa.field("p_label", pa.float32(), nullable=False),
        pa.field("p_max", pa.float32(), nullable=False),
        pa.field("topk", pa.list_(pa.int32())),  # nullable: top-k classes, most likely first
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("student", pa.string(), nullable=False),
        pa.field("teacher_is_random", pa.bool_(), nullable=False),  # noise-floor rows
        pa.field("n_samples", pa.int64(), nullable=False),
        pa.field("num_classes", pa.int32(), nullable=False),
        pa.field("acc_t", pa.float64(), nullable=False),  # fractions in [0, 1]
        pa.field("acc_s", pa.float64(), nullable=False),
        pa.field("delta_acc", pa.float64(), nullable=False),
        pa.field("n_pos", pa.int64(), nullable=False),
        pa.field("n_neg", pa.int64(), nullable=False),
        pa.field("rho_pos", pa.float64(), nullable=False),
        pa.field("rho_neg", pa.float64(), nullable=False),
        pa.field("entropy", pa.float64()),  # nats; null when there is no positive flip
        # Grassberger's bias-corrected estimate of the same entropy (claim 2; the plug-in is biased low
        # for few flips), and the null model's: the entropy of the student's per-class error profile,
        # which flips drawn at random from the student's errors would show
        pa.field("entropy_corrected", pa.float64()),
        pa.field("entropy_null", pa.float64()),
        # Cohen's kappa of the two models' correctness (agreement beyond chance, issue "Which teacher?");
        # null when chance agreement is 1 (a model right, or wrong, on every sample)
        pa.field("kappa", pa.float64()),
    ]
    + [pa.field(f"top{x}_classes", pa.int32(), nullable=False) for x in TOP_X_PERCENTS]
)

PAIR_CLASS_SCHEMA = pa.schema(
    [
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("student", pa.string(), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("pos_flips", pa.int64(), nullable=False),
        pa.field("neg_flips", pa.int64(), nullable=False),
    ]
)

TRANSFER_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("study_part", pa.string(), nullable=False),  # transfer | multi_teacher | hparam
        pa.field("method", pa.string(), nullable=False),  # kl, xe_kl, xe_kl_mcl, kl_dp, ...
        pa.field("mode", pa.string(), nullable=False),  # single | sequential | parallel | soup
        pa.field("student", pa.string(), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),  # teachers joined by '+', in order
        pa.field("teachers", pa.list_(pa.string()), nullable=False),
        pa.field("hparams_json", pa.string(), nullable=False),  # canonical JSON of method params
        pa.field("lr", pa.float64(), nullable=False),  # lr actually used (after batch scaling)
        pa.field("temperature", pa.float64(), nullable=False),
        pa.field("epochs", pa.int32(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("n_train", pa.int64(), nullable=False),
        pa.field("n_eval", pa.int64(), nullable=False),
        pa.field("acc_before", pa.float64(), nullable=False),  # fractions in [0, 1]
        pa.field("acc_last", pa.float64(), nullable=False),
        pa.field("acc_best", pa.float64(), nullable=False),
        pa.field("best_epoch", pa.int32(), nullable=False),
        pa.field("delta_last", pa.float64(), nullable=False),  # acc_last - acc_before
        pa.field("delta_best", pa.float64(), nullable=False),
        pa.field("gain", pa.float64(), nullable=False),  # share of eval samples, last model
        pa.field("loss", pa.float64(), nullable=False),
        # The uncertainty of delta_last, from the paired before/after correctness on the eval split:
        # n_gain / n_loss = eval samples wrong before and right after / right before and wrong after (last
        # model; n_gain - n_loss = delta_last * n_eval); p_mcnemar = exact two-sided McNemar p-value of
        # "no change"; delta_ci_low/high = 95% Tango score interval of delta_last (paired, depends only on
        # n_gain, n_loss, n_eval; keeps a width when nothing changed, unlike Wald): see zoo_study/stats.py.
        pa.field("n_gain", pa.int64(), nullable=False),
        pa.field("n_loss", pa.int64(), nullable=False),
        pa.field("p_mcnemar", pa.float64(), nullable=False),
        pa.field("delta_ci_low", pa.float64(), nullable=False),
        pa.field("delta_ci_high", pa.float64(), nullable=False),
        pa.field("rho_pos_before", pa.float64()),  # vs the (first) teacher; null for no teacher
        pa.field("rho_pos_after", pa.float64()),
        pa.field("rho_neg_before", pa.float64()),
        pa.field("rho_neg_after", pa.float64()),
        pa.field("teacher_share", pa.float64()),  # share of train samples routed to a teacher
        # of the train samples that are positive / negative flips (teacher vs initial student on the same
        # augmented view), the share routed to a teacher (paper Tab 3: 72% / 9%); null without routing
        pa.field("teacher_share_pos", pa.float64()),
        pa.field("teacher_share_neg", pa.float64()),
        pa.field("runtime_s", pa.float64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("versions_json", pa.string(), nullable=False),
        # added later, so null in files written before they existed (read as pretrained / none):
        # student_init = pretrained | scratch (scratch: gain and loss count against the untrained
        # architecture, acc_before is its chance-level accuracy); mixup = none | pmu | fmu with
        # mixup_share the share of every batch mixed (0 for none, 1 for fmu)
        pa.field("student_init", pa.string()),
        pa.field("mixup", pa.string()),
        pa.field("mixup_share", pa.float64()),
        # the transfer.variants entry the job copied the study's transfer under (JSON); null for the study's
        # own transfers (and for files written before variants were marked)
        pa.field("variant", pa.string()),
        # added later (null in older files): what a method's state reports about the run (JSON), e.g. MCL's
        # tau given and used, planned interpolations, the slow model's share of the fast trajectory and the
        # fast weights' norm ratio to the pretrained ones (zoo_study/transfer/mcl.py)
        pa.field("method_info_json", pa.string()),
    ]
)

TRANSFER_EPOCH_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("stage", pa.int32(), nullable=False),  # 0 for single-stage jobs
        pa.field("stage_teacher", pa.string()),  # teacher of this stage (sequential), nullable
        pa.field("epoch", pa.int32(), nullable=False),  # 0 = before training
        pa.field("acc", pa.float64(), nullable=False),
        pa.field("delta", pa.float64(), nullable=False),  # vs the student before any transfer
        pa.field("gain", pa.float64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("train_loss", pa.float64()),  # mean objective over the epoch, null at epoch 0
        pa.field("teacher_share", pa.float64()),
    ]
)

TRANSFER_PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("pred_before", pa.int32(), nullable=False),
        pa.field("pred_after", pa.int32(), nullable=False),  # the kept model (last, or MCL slow)
    ]
)

# Adversarial robustness of one model: a zoo student before transfer (transfer_id null) or the last
# student of one transfer job. One row per eps; eps in pixel units of [0, 1] images (zoo_study/robustness.py:
# the attack's budget in the model's normalised space is eps / std per channel). clean_acc and v_measure
# repeat on every row of a job. n = evaluated samples (the eval split or its stratified subset).
ROBUSTNESS_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),  # the student architecture's zoo id
        pa.field("transfer_id", pa.string()),  # null: the zoo model itself (before any transfer)
        pa.field("eps", pa.float64(), nullable=False),
        pa.field("ifgsm_steps", pa.int32(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("clean_acc", pa.float64(), nullable=False),
        pa.field("fgsm_acc", pa.float64(), nullable=False),
        pa.field("ifgsm_acc", pa.float64(), nullable=False),
        pa.field("v_measure", pa.float64()),  # k-means (k = classes) of penultimate features vs labels
        pa.field("runtime_s", pa.float64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        # added later (null in older files): V-measure's chance level for these n and clusters (it is far
        # from 0 with few points per cluster) and the adjusted mutual information (0 at chance)
        pa.field("v_chance", pa.float64()),
        pa.field("ami", pa.float64()),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("spec_json", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("traceback", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("failed_at", pa.timestamp("s", tz="UTC"), nullable=False),
    ]
)

# Fig 2b: one text embedding per class of the dataset (zoo_study/scoring/semantics.py), with its super-class
CLASS_EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("superclass_id", pa.int32()),  # nullable: datasets without super-classes
        pa.field("superclass_name", pa.string()),
        pa.field("encoder", pa.string(), nullable=False),  # lexical | clip:<folder>
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),  # L2-normalised
    ]
)

# Fig 2b per scored pair and X: similarity of its top-X% positive-flip classes vs random class sets, and
# the exact super-class measure (zoo_study/scoring/semantics.py says how each value is computed)
PAIR_SEMANTICS_SCHEMA = pa.schema(
    [
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("student", pa.string(), nullable=False),
        pa.field("teacher_is_random", pa.bool_(), nullable=False),
        pa.field("x_pct", pa.int32(), nullable=False),
        pa.field("n_classes", pa.int32(), nullable=False),  # size of the top-X% set
        pa.field("sim_top", pa.float64()),  # NULL below two classes
        pa.field("sim_all", pa.float64(), nullable=False),  # mean over all class pairs
        pa.field("sim_random_mean", pa.float64()),
        pa.field("sim_random_low", pa.float64()),  # 2.5th percentile over random sets
        pa.field("sim_random_high", pa.float64()),  # 97.5th
        pa.field("n_random", pa.int32(), nullable=False),
        pa.field("same_super_share", pa.float64()),  # NULL without super-classes or below two classes
        pa.field("same_super_chance", pa.float64()),
        pa.field("encoder", pa.string(), nullable=False),
    ]
)
