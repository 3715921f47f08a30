"""Parquet schemas, the results-root layout, and atomic writes.

Why one module: every stage writes and the analysis layer reads the same files. Keeping the schemas and
paths here means a column is renamed in one place, and ``analysis`` needs nothing else from the library.

Layout of a results root (``runs/<study>/``)::

    config.toml, environment.json           resolved config and versions (written by the pipeline)
    zoo/models/<model>.parquet               one catalog row per model (models view: zoo/models/*.parquet)
    zoo/weights/<model>.safetensors          weights of models the pipeline trained itself
    predictions/model=<model>.parquet        per-sample predictions of one model on the eval split
    scores/pairs.parquet                     one row per scored (teacher, student) pair
    scores/pair_classes.parquet              per-class flips of every scored pair
    transfers/<job_id>/summary.parquet       one row per transfer job
    transfers/<job_id>/epochs.parquet        per-epoch (and per-stage) curve of a transfer job
    transfers/<job_id>/predictions.parquet   per-sample eval predictions before / after transfer
    hparams/<job_id>.parquet                 grid-search rows (same columns as a transfer summary)
    failures/<job_id>.parquet                a failed job: error, traceback, attempts
    _jobs/<job_id>.json                      record of a finished job (its spec); part of "done"
    report/index.html, report/figures/*      the report
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TOP_X_PERCENTS: tuple[int, ...] = (2, 5, 20, 50, 100)

# --------------------------------------------------------------------------------------------- schemas
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

SCHEMAS: dict[str, pa.Schema] = {
    "models": MODEL_SCHEMA,
    "predictions": PREDICTION_SCHEMA,
    "pairs": PAIR_SCHEMA,
    "pair_classes": PAIR_CLASS_SCHEMA,
    "transfers": TRANSFER_SUMMARY_SCHEMA,
    "epochs": TRANSFER_EPOCH_SCHEMA,
    "transfer_predictions": TRANSFER_PREDICTION_SCHEMA,
    "failures": FAILURE_SCHEMA,
}

# ---------------------------------------------------------------------------------------------- layout
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(model_id: str) -> str:
    """A model id as a file-name component ('/', ':' and friends become '_')."""
    if not model_id:
        raise ValueError("model id must be a non-empty string")
    return _UNSAFE.sub("_", model_id)


class ResultsLayout:
    """Paths inside one results root. Pure path arithmetic: nothing is created here."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # files written by the pipeline
    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def environment_file(self) -> Path:
        return self.root / "environment.json"

    # zoo
    @property
    def models_dir(self) -> Path:
        return self.root / "zoo" / "models"

    def model_row(self, model_id: str) -> Path:
        return self.models_dir / f"{safe_name(model_id)}.parquet"

    @property
    def weights_dir(self) -> Path:
        return self.root / "zoo" / "weights"

    def weights(self, model_id: str) -> Path:
        return self.weights_dir / f"{safe_name(model_id)}.safetensors"

    # predictions
    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, model_id: str) -> Path:
        return self.predictions_dir / f"model={safe_name(model_id)}.parquet"

    # scores
    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def pairs(self) -> Path:
        return self.scores_dir / "pairs.parquet"

    @property
    def pair_classes(self) -> Path:
        return self.scores_dir / "pair_classes.parquet"

    # transfers
    @property
    def transfers_dir(self) -> Path:
        return self.root / "transfers"

    def transfer_dir(self, job_id: str) -> Path:
        return self.transfers_dir / job_id

    def transfer_summary(self, job_id: str) -> Path:
        return self.transfer_dir(job_id) / "summary.parquet"

    def transfer_epochs(self, job_id: str) -> Path:
        return self.transfer_dir(job_id) / "epochs.parquet"

    def transfer_predictions(self, job_id: str) -> Path:
        return self.transfer_dir(job_id) / "predictions.parquet"

    @property
    def hparams_dir(self) -> Path:
        return self.root / "hparams"

    def hparam_row(self, job_id: str) -> Path:
        return self.hparams_dir / f"{job_id}.parquet"

    # job records: which spec produced the outputs at a path (outputs keyed by model id outlive specs)
    @property
    def job_records_dir(self) -> Path:
        return self.root / "_jobs"

    def job_record(self, job_id: str) -> Path:
        return self.job_records_dir / f"{job_id}.json"

    # failures and report
    @property
    def failures_dir(self) -> Path:
        return self.root / "failures"

    def failure(self, job_id: str) -> Path:
        return self.failures_dir / f"{job_id}.parquet"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


# ----------------------------------------------------------------------------------------------- tables
def table_from_rows(rows: Sequence[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``; a missing or extra column is an error, not a surprise."""
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        missing = names - set(row)
        if extra or missing:
            raise ValueError(
                f"row {i} does not match the schema: extra columns {sorted(extra)}, missing {sorted(missing)}"
            )
    return pa.Table.from_pylist(list(rows), schema=schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` (same names required)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table is missing columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema)


# ----------------------------------------------------------------------------------------------- writes
def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str], schema: pa.Schema | None = None) -> Path:
    """Write ``table`` to ``path`` via a temp file in the same folder and an atomic rename.

    Why: a job killed mid-write must never leave a file that reads back as complete. The temp name
    starts with '.' and ends in '.tmp', so globs like ``*.parquet`` never see it.
    """
    path = Path(path)
    if schema is not None:
        table = conform(table, schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{uuid.uuid4().hex[:8]}.tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Atomically write raw bytes (configs, JSON, HTML, PNG) with the same temp-then-rename rule."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    return write_bytes_atomic(text.encode("utf-8"), path)


# ------------------------------------------------------------------------------------------------ reads
def read_parquet_checked(path: str | os.PathLike[str], schema: pa.Schema | None = None) -> pa.Table | None:
    """Read a result file, or return None when it is missing, truncated or has the wrong columns.

    "Done" in the pipeline means this returns a table: a half-written or corrupt file counts as not done.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError):
        return None
    if schema is not None:
        try:
            table = conform(table, schema)
        except (ValueError, pa.ArrowException):
            return None
    return table


def is_complete(paths: Iterable[str | os.PathLike[str]]) -> bool:
    """True when every path exists and reads back as Parquet."""
    return all(read_parquet_checked(p) is not None for p in paths)
