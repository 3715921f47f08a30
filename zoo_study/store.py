"""The results-root catalogue and layout, table checks, and atomic writes and reads.

Why one module: every stage writes and the analysis layer reads the same files. Keeping their paths and
the rules for writing them here means a file moves in one place, and ``analysis`` needs nothing else from
the library. The column schemas live in :mod:`zoo_study.schemas` (the longest, most often edited part)
and are re-exported here, so ``from zoo_study.store import PAIR_SCHEMA`` works as before.

The layout of a results root (``runs/<study>/``) is declared once, in :data:`TABLES` (every result table:
view name, path template, schema, description; the stage that writes each is its
``pipelines.stages.Stage.tables``) and :data:`FILES` (config, environment,
weights, job records, report). :class:`ResultsLayout`'s path methods, the DuckDB views of
``analysis.db`` and the report's "no data" messages are all derived from them.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from zoo_study.schemas import (  # noqa: F401  (re-exported: the usual import path of the schemas)
    FAILURE_SCHEMA,
    CLASS_EMBEDDING_SCHEMA,
    MODEL_SCHEMA,
    PAIR_CLASS_SCHEMA,
    PAIR_SEMANTICS_SCHEMA,
    PAIR_SCHEMA,
    PREDICTION_SCHEMA,
    ROBUSTNESS_SCHEMA,
    SCHEMA_VERSION,
    TOP_X_PERCENTS,
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
)
from zoo_study.methods.registry import method_tables


# ------------------------------------------------------------------------------------------- catalogue
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def safe_name(model_id: str) -> str:
    """A model id as a file-name component ('/', ':' and friends become '_')."""
    if not model_id:
        raise ValueError("model id must be a non-empty string")
    return _UNSAFE.sub("_", model_id)


class _Template:
    """Path arithmetic shared by :class:`FileSpec` and :class:`TableSpec` (which have ``name`` and
    ``template``): a '/'-separated path under the root where ``{model}`` stands for a model id (made
    file-safe by :func:`safe_name`) and ``{job_id}`` for a job id."""

    @property
    def glob(self) -> str:
        """The template with every placeholder as ``*``: matches every file of this kind."""
        return _PLACEHOLDER.sub("*", self.template)

    @property
    def shown(self) -> str:
        """The template as people read it: ``transfers/<job_id>/summary.parquet``."""
        return _PLACEHOLDER.sub(r"<\1>", self.template)

    @property
    def folder(self) -> str:
        """The fixed folder above the first placeholder ('zoo/models', 'transfers', 'scores')."""
        parts = self.template.split("/")[:-1]
        return "/".join(parts[: next((i for i, p in enumerate(parts) if "{" in p), len(parts))])

    def relpath(self, **keys: str) -> str:
        """One file's path relative to the root: ``relpath(job_id="ab12")``."""
        if set(keys) != set(need := _PLACEHOLDER.findall(self.template)):
            raise TypeError(f"{self.name} ({self.template}) needs {need}, got {sorted(keys)}")
        return self.template.format(**{k: safe_name(v) if k == "model" else str(v) for k, v in keys.items()})


@dataclass(frozen=True)
class FileSpec(_Template):
    """A kind of file in a results root that is not a table (config, weights, job records, report)."""

    name: str
    template: str
    stage: str  # the pipeline stage that writes it ("any": every stage, "run": the driver)
    description: str  # one line


@dataclass(frozen=True)
class TableSpec(_Template):
    """A result table: its files (``glob``) follow ``schema``, and DuckDB view ``name`` reads them all."""

    name: str  # the DuckDB view
    template: str
    schema: pa.Schema
    what: str  # its rows in words, for messages: "transfer results"
    description: str  # one line

    pattern = _Template.glob  # the name analysis.db and figures use for the glob


_V = TypeVar("_V")


class _Catalogue(Mapping[str, _V]):
    """A read-only mapping: fixed entries, then those ``more()`` gives, read on every access.

    Why: a method's own tables (AMTML-KD's teacher weights) are declared with the method
    (:class:`zoo_study.methods.registry.MethodTable`) and the registry loads its method modules, which
    import torch, on first use; reading them only when the catalogue is used keeps ``import
    zoo_study.store`` cheap and picks up a method registered later (a test's toy method)."""

    def __init__(self, fixed: Mapping[str, _V], more: Callable[[], Mapping[str, _V]]) -> None:
        self._fixed, self._more = dict(fixed), more

    def _all(self) -> dict[str, _V]:
        return {**self._fixed, **self._more()}

    def __getitem__(self, name: str) -> _V:
        return self._fixed[name] if name in self._fixed else self._more()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _method_tables() -> dict[str, TableSpec]:
    """The tables the registered methods declare, as catalogue entries written by the transfer stages."""
    return {t.name: TableSpec(t.name, t.template, t.schema, t.what, t.description) for t in method_tables()}


# One entry per DuckDB view, in view order: a new table is one more line here (and its schema above); a
# method's own table is declared with the method and follows these (``_method_tables``).
_CORE_TABLES: dict[str, TableSpec] = {t.name: t for t in (
    TableSpec("models", "zoo/models/{model}.parquet", MODEL_SCHEMA, "model catalog rows",
              "one catalog row per model: source, architecture, family, size, preprocessing"),
    TableSpec("predictions", "predictions/model={model}.parquet", PREDICTION_SCHEMA, "model predictions",
              "per-sample predictions of one model on the eval split"),
    TableSpec("pairs", "scores/pairs.parquet", PAIR_SCHEMA, "pair scores",
              "one row per scored (teacher, student) pair: accuracies, flips, entropy, top-X% classes"),
    TableSpec("pair_classes", "scores/pair_classes.parquet", PAIR_CLASS_SCHEMA, "per-class pair flips",
              "positive and negative flips per class of every scored pair"),
    TableSpec("class_embeddings", "classes/embeddings.parquet", CLASS_EMBEDDING_SCHEMA,
              "class text embeddings", "one text embedding per class of the dataset (Fig 2b), with its super-class"),
    TableSpec("pair_semantics", "scores/pair_semantics.parquet", PAIR_SEMANTICS_SCHEMA,
              "semantic similarity of top classes", "per pair and X: similarity of its top-X% positive-flip "
              "classes vs random class sets, and the share in one super-class vs chance"),
    TableSpec("transfers", "transfers/{job_id}/summary.parquet", TRANSFER_SUMMARY_SCHEMA,
              "transfer results", "one row per transfer job (single or multi-teacher): accuracies, gain, loss"),
    TableSpec("epochs", "transfers/{job_id}/epochs.parquet", TRANSFER_EPOCH_SCHEMA,
              "per-epoch transfer curves", "per-epoch (and per-stage) curve of a transfer job"),
    TableSpec("transfer_predictions", "transfers/{job_id}/predictions.parquet", TRANSFER_PREDICTION_SCHEMA,
              "per-sample transfer predictions", "per-sample eval predictions before and after transfer"),
    TableSpec("hparams", "hparams/{job_id}.parquet", TRANSFER_SUMMARY_SCHEMA, "hyper-parameter grid results",
              "grid-search rows, kept apart from the study's transfers (same columns as a transfer summary)"),
    TableSpec("robustness", "robustness/{job_id}.parquet", ROBUSTNESS_SCHEMA, "robustness results",
              "clean, FGSM and I-FGSM accuracy per eps (and feature V-measure) of students before and after transfer"),
    TableSpec("failures", "failures/{job_id}.parquet", FAILURE_SCHEMA, "failed jobs",
              "one row per failed or skipped job: error, traceback, attempts"),
)}  # fmt: skip
TABLES: Mapping[str, TableSpec] = _Catalogue(_CORE_TABLES, _method_tables)

FILES: dict[str, FileSpec] = {f.name: f for f in (  # the files that are not tables
    FileSpec("config", "config.toml", "run", "the resolved study config"),
    FileSpec("environment", "environment.json", "run", "versions and hardware of the run"),
    FileSpec("weights", "zoo/weights/{model}.safetensors", "zoo", "weights of a model the pipeline trained itself"),
    FileSpec("student_weights", "transfers/{job_id}/student.safetensors", "transfer",
             "the last student of a transfer (written when the robustness stage is enabled)"),
    FileSpec("job_record", "_jobs/{job_id}.json", "any", "record of a finished job (its spec); part of 'done'"),
    FileSpec("report", "report/index.html", "report", "the report; its figures and tables beside it"),
)}  # fmt: skip



def _distinct_schemas() -> dict[str, pa.Schema]:
    """Every distinct schema, under the first table that uses it (hparams reuse the transfer summary's)."""
    out: dict[str, pa.Schema] = {}
    for table in TABLES.values():
        if table.schema not in out.values():
            out[table.name] = table.schema
    return out


SCHEMAS: Mapping[str, pa.Schema] = _Catalogue({}, _distinct_schemas)
# tables and files; the core entries are found without loading the method registry
_ALL: Mapping[str, FileSpec | TableSpec] = _Catalogue({**_CORE_TABLES, **FILES}, _method_tables)


def keyed_entries() -> list[tuple[str, FileSpec | TableSpec, list[str]]]:
    """``(name, entry, keys)`` of every catalogue entry whose path has a key (``{job_id}``, ``{model}``):
    the files that jobs write one per id or model (pipelines/prune.py walks them)."""
    return [(name, e, keys) for name, e in _ALL.items() if (keys := _PLACEHOLDER.findall(e.template))]


def shown(name: str) -> str:
    """The path template of catalogue entry ``name`` as people read it (``transfers/<job_id>/...``)."""
    return _ALL[name].shown


def _keyed(name: str) -> Callable[[ResultsLayout, str], Path]:
    """A layout method for one file of catalogue entry ``name``, e.g. ``layout.transfer_summary(job_id)``."""
    spec = _CORE_TABLES.get(name) or FILES[name]
    (key,) = _PLACEHOLDER.findall(spec.template)

    def method(self: ResultsLayout, value: str) -> Path:
        return self.path(name, **{key: value})

    method.__doc__ = f"``{spec.shown}`` for one {key}."
    return method


class ResultsLayout:
    """Paths inside one results root, from the catalogue. Pure path arithmetic: nothing is created here."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, name: str, **keys: str) -> Path:
        """The file of catalogue entry ``name`` (a table or a file): ``path("transfers", job_id=j)``."""
        if name not in _ALL:
            raise KeyError(f"no table or file {name!r} in the results layout; known: {', '.join(_ALL)}")
        return self.root / _ALL[name].relpath(**keys)

    def folder(self, name: str) -> Path:
        """The fixed folder of catalogue entry ``name`` (``transfers``, ``zoo/models``)."""
        return self.root / _ALL[name].folder

    def is_results_root(self) -> bool:
        """Whether the root holds a study: a config, or at least one file of a catalogue table."""
        return self.config_file.is_file() or any(next(self.root.glob(t.glob), None) for t in TABLES.values())

    config_file = property(lambda self: self.path("config"))
    environment_file = property(lambda self: self.path("environment"))
    models_dir = property(lambda self: self.folder("models"))
    weights_dir = property(lambda self: self.folder("weights"))
    predictions_dir = property(lambda self: self.folder("predictions"))
    scores_dir = property(lambda self: self.folder("pairs"))
    pairs = property(lambda self: self.path("pairs"))
    pair_classes = property(lambda self: self.path("pair_classes"))
    class_embeddings = property(lambda self: self.path("class_embeddings"))
    pair_semantics = property(lambda self: self.path("pair_semantics"))
    transfers_dir = property(lambda self: self.folder("transfers"))
    hparams_dir = property(lambda self: self.folder("hparams"))
    job_records_dir = property(lambda self: self.folder("job_record"))
    failures_dir = property(lambda self: self.folder("failures"))
    report_dir = property(lambda self: self.folder("report"))

    model_row = _keyed("models")
    weights = _keyed("weights")
    predictions = _keyed("predictions")
    transfer_summary = _keyed("transfers")
    transfer_epochs = _keyed("epochs")
    transfer_predictions = _keyed("transfer_predictions")
    hparam_row = _keyed("hparams")
    robustness_row = _keyed("robustness")
    student_weights = _keyed("student_weights")
    job_record = _keyed("job_record")  # which spec produced a job's outputs: part of "done"
    failure = _keyed("failures")

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
    """Select and cast ``table``'s columns to ``schema`` (same names required). A missing *nullable*
    column (one added to the schema after the file was written) reads as nulls, so a schema that grows
    never makes finished results look unfinished."""
    for field in schema:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
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


TEMP_TAG = ".zs-"  # in every temp name the atomic writes make: .<name>.zs-<pid>-<random>.tmp
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.zs-(?P<pid>[0-9]+)-(?P<rand>[A-Za-z0-9_]{6,})\.(?:tmp|tmpdir)")


def temp_name(name: str, suffix: str = ".tmp") -> tuple[str, str]:
    """(prefix, suffix) for ``tempfile.mkstemp`` / ``mkdtemp``: the temp file or folder of ``name`` written
    by this process. Why a scheme of our own: the start-up clean-up removes temp files by this name only
    (:func:`temp_writer`), so it can never take a file that another program left in a folder."""
    return f".{name}{TEMP_TAG}{os.getpid()}-", suffix


def temp_writer(name: str) -> int | None:
    """The PID of the process that made temp file (or folder) ``name`` by this module's scheme; None for
    any other name (``.draft.tmp``, an editor's ``.x.swp``, other programs' temp files)."""
    m = _TEMP_NAME.fullmatch(name)
    return int(m.group("pid")) if m else None


def _write_atomic(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temp file in ``path``'s folder, fsync it, then rename it onto ``path``.

    Why: a job killed mid-write must never leave a file that reads back as complete. The temp name
    (:func:`temp_name`: ``.<name>.zs-<pid>-<random>.tmp``) starts with '.' and ends in '.tmp', so globs
    like ``*.parquet`` never see it, and names its writer, so the clean-up knows it is ours.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temp_name(path.name)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str], schema: pa.Schema | None = None) -> Path:
    """Write ``table`` to ``path`` atomically (temp file in the same folder + rename)."""
    if schema is not None:
        table = conform(table, schema)
    return _write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Atomically write raw bytes (configs, JSON, HTML, PNG) with the same temp-then-rename rule."""
    return _write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


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
