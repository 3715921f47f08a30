"""A toy transfer method with state and a table of its own, declared in this one module (issue 23).

``toy_counted`` is XE-KL with a state that counts, per class, the training samples its objective saw,
and a table ``toy_class_counts`` (one row per phase and class) that the transfer job writes beside its
summary. Importing this module registers it; nothing else in the code base names it: the config accepts
it, the planner gives its jobs the table as an output, the executor builds the table, the store and the
DuckDB views list it, and the report labels it, all from this declaration
(``tests/test_toy_method.py`` runs it end to end).
"""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa
import torch

from zoo_study.methods import losses as L
from zoo_study.methods.registry import (MethodState, MethodTable, ObjectiveInputs, ObjectiveOutput, Param,
                                        SetupContext, register_method)
from zoo_study.store import table_from_rows

NAME = "toy_counted"
LABEL = "Toy (counted)"

TOY_SCHEMA = pa.schema([
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("stage", pa.int32(), nullable=False),
    pa.field("class_id", pa.int64(), nullable=False),
    pa.field("samples", pa.int64(), nullable=False),
])


class ToyState(MethodState):
    """Per-class counts of the labels the objective saw (kept on the host: a toy, not a fast path)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def record(self, labels: torch.Tensor) -> None:
        for c, n in zip(*torch.unique(labels.detach().cpu(), return_counts=True)):
            self.counts[int(c)] = self.counts.get(int(c), 0) + int(n)

    def extra(self) -> dict[str, Any]:
        return {"toy_class_samples": {str(c): n for c, n in sorted(self.counts.items())}}


def setup_toy(ctx: SetupContext) -> MethodState:
    """The setup hook: a fresh counter per phase."""
    return ToyState()


def toy_table(result: Any) -> pa.Table:
    """One row per phase and class, from the state's extras in the transfer's info."""
    rows = [{"job_id": result.row["job_id"], "stage": stage, "class_id": int(c), "samples": int(n)}
            for stage, phase in enumerate(result.info.get("phases", []))
            for c, n in phase.get("toy_class_samples", {}).items()]
    return table_from_rows(rows, TOY_SCHEMA)


TOY_TABLE = MethodTable("toy_class_counts", "transfers/{job_id}/toy_class_counts.parquet", TOY_SCHEMA,
                        "toy class counts", "toy_counted: training samples per class its objective saw",
                        build=toy_table)


@register_method(NAME, label=LABEL, needs_labels=True, params={"lambda": Param(0.5, float, 0.0, 1.0)},
                 setup=setup_toy, tables=(TOY_TABLE,))
def toy_counted(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    """XE-KL (lambda * KL + (1 - lambda) * CE) that counts the labels of every batch in its state."""
    inp.state.record(inp.labels)
    kl = L.kl_term(inp.teacher, inp.student, inp.temperature)
    ce = L.cross_entropy(inp.student, inp.targets)
    return ObjectiveOutput(p["lambda"] * kl + (1.0 - p["lambda"]) * ce)
