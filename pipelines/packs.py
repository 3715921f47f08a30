"""Packs: several pending jobs that share their inputs run as one task, and stay separate jobs.

Why: the transfers of one (teacher, student) pair (every method, every grid point) read the same models
and the same batches; run in one task (:func:`zoo_study.transfer.job.run_transfer_pack`) they decode,
augment and preprocess each batch once, run the teacher and the frozen student once per batch, and
evaluate all students in one pass. Each member keeps its own id, its own result folder, its own job
record and failure record: done detection, resume and ``--dry-run`` are per job, exactly as without
packs. The runner forms packs at submission time from the jobs still to run (a finished member is never
redone), up to ``max_size`` members with equal :attr:`~pipelines.jobs.Job.pack` keys. Which jobs may
share a pack is decided once, by the planner: it sets ``Job.pack`` (transfers key by teacher, data and
the batch settings of :func:`zoo_study.transfer.config.pack_key`) and ``Job.pack_group`` (the student);
the runner and the ``--dry-run --bench`` estimate only compare those fields. A pack holds one pair's
transfers, or (``ray.pack_students`` > 1) those of several students of one teacher, which then share the
batches and the teacher forward. On a GPU a pack's estimated memory (:mod:`pipelines.memory`: the teacher
once, every member's state, the largest member's activations) stays within ``ray.pack_gpu_memory_gb`` or
80% of the smallest GPU; a pack that still runs out of memory is split by the runner and its parts retried.

A pack is submitted as a *carrier* job of stage ``<stage>_pack`` (:func:`carrier_for`) whose spec lists
its members (:func:`carrier_members`: id, spec, output names). Its executor returns one
:class:`MemberResult` per member, keyed by the member's job id: the member's outputs by name, or its own
failure; :func:`member_outcomes` turns them into each member's :class:`~pipelines.backends.Outcome`.
"""

from __future__ import annotations

import collections
import traceback as _tb
from dataclasses import dataclass
from typing import Any, Callable, Container, Mapping, NamedTuple

from pipelines.backends import Outcome, is_oom, one_line
from pipelines.jobs import Job
from pipelines.memory import pack_bytes

__all__ = ["MemberResult", "PackMember", "carrier_for", "carrier_members", "member_outcomes", "take_pack"]


@dataclass(frozen=True)
class MemberResult:
    """What a pack's executor returns for one member: its outputs by name (as a lone job's executor
    returns them), or its own failure (``error``: one line; ``traceback``; ``oom``: it ran out of
    accelerator memory, so the runner retries it alone). Why typed: a member's result is data of its own,
    not a prefix of a string key, and a member that fails beside others that finish is one field."""

    job_id: str
    outputs: Mapping[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    oom: bool = False

    @classmethod
    def failed(cls, job_id: str, exc: BaseException) -> "MemberResult":
        """A member ended by ``exc``: its one-line error and its own traceback."""
        text = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(job_id, None, one_line(exc), text, is_oom(exc))

    @property
    def ok(self) -> bool:
        return self.outputs is not None

    def outcome(self, pack: Outcome) -> Outcome:
        """This member's :class:`Outcome`, with where and how long its pack ran."""
        kind = "ok" if self.ok else "oom" if self.oom else "error"
        return Outcome(kind, outputs=dict(self.outputs) if self.ok else None, error=self.error,
                       traceback=self.traceback, where=pack.where, seconds=pack.seconds)


class PackMember(NamedTuple):
    """One member as its pack's executor sees it: its job id, its spec and the names of its outputs."""

    job_id: str
    spec: dict[str, Any]
    outputs: list[str]


def take_pack(first: Job, todo: collections.deque, max_size: int, *, max_groups: int = 1,
              memory_budget: float = 0.0, ready: Callable[[Job], bool] | None = None,
              keep_out: Container[str] = ()) -> list[Job]:
    """``first`` and up to ``max_size - 1`` other first-attempt jobs of ``todo`` that pack with it
    (removed from ``todo``). ``todo`` holds ``(job, attempt)``; retried jobs run alone.

    Jobs pack when their stage and :attr:`Job.pack` key are equal. Within a key, :attr:`Job.pack_group`
    tells the jobs that read the same inputs (one student of a transfer's teacher) from those that read
    others: a pack spans at most ``max_groups`` groups (1: every member has ``first``'s inputs).
    ``memory_budget`` > 0 (bytes): the pack's memory (:func:`pipelines.memory.pack_bytes`: the shared
    teacher once, every member's state, the largest member's activations) stays within it (the first
    member always runs). ``ready(job)``: whether a job of another group may join now (its inputs exist);
    one that may not stays in ``todo`` and is handled when its turn comes. ``keep_out``: ids of jobs that
    run in a group of their own (the halves of a pack that ran out of memory)."""
    group = [first]
    if not first.pack or max_size <= 1:
        return group
    groups = {first.pack_group}
    costs = [(first.pack_cost, first.pack_activation)]
    keep: list[tuple[Job, int]] = []
    while todo:
        job, attempt = todo.popleft()
        fits = (len(group) < max_size and attempt == 1 and job.pack == first.pack and job.stage == first.stage
                and job.job_id not in keep_out)
        if fits and job.pack_group not in groups:
            fits = len(groups) < max_groups and (ready is None or ready(job))
        elif fits:
            fits = job.inputs == first.inputs or job.pack_group != first.pack_group
        if fits and memory_budget > 0:
            fits = pack_bytes([*costs, (job.pack_cost, job.pack_activation)], first.pack_shared) <= memory_budget
        if fits:
            group.append(job)
            groups.add(job.pack_group)
            costs.append((job.pack_cost, job.pack_activation))
        else:
            keep.append((job, attempt))
    todo.extend(keep)
    return group


def carrier_for(group: list[Job]) -> Job:
    """The one job submitted for a pack: its spec lists the members (ids, specs, output names); it reads
    the union of their inputs and declares the union of their files (each member writes its own)."""
    first = group[0]
    outputs = {rel: rel for j in group for rel in j.outputs.values()}
    inputs = tuple(dict.fromkeys(rel for j in group for rel in j.inputs))
    spec = {"members": [dict(j.spec) for j in group], "job_ids": [j.job_id for j in group],
            "outputs": [list(j.outputs) for j in group]}
    n_groups = len({j.pack_group for j in group})
    name = f"{len(group)} x {first.name}" if n_groups == 1 else f"{len(group)} transfers into {n_groups} students"
    return Job(f"{first.stage}_pack", spec, outputs, inputs=inputs, num_cpus=first.num_cpus,
               num_gpus=first.num_gpus, name=name, runtime=first.runtime)


def carrier_members(spec: Mapping[str, Any]) -> list[PackMember]:
    """The members of a carrier's spec (:func:`carrier_for`), in pack order."""
    return [PackMember(jid, dict(s), list(names))
            for jid, s, names in zip(spec["job_ids"], spec["members"], spec["outputs"], strict=True)]


def member_outcomes(group: list[Job], pack: Outcome) -> list[tuple[Job, Outcome]]:
    """Each member's own :class:`Outcome` from its pack's successful one (kind ``ok``, ``error`` or
    ``oom``). A member the result lacks, or holds as anything but a :class:`MemberResult`, has failed:
    the executor broke the carrier's contract."""
    results = pack.outputs or {}
    out = []
    for job in group:
        res = results.get(job.job_id)
        if not isinstance(res, MemberResult) or res.job_id != job.job_id:
            what = "no result" if res is None else f"{type(res).__name__} instead of a MemberResult"
            res = MemberResult(job.job_id, error=f"invalid result: the pack's executor returned {what} for this member")
        out.append((job, res.outcome(pack)))
    return out
