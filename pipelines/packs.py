"""Packs: several pending jobs that share their inputs run as one task, and stay separate jobs.

Why: the transfers of one (teacher, student) pair (every method, every grid point) read the same models
and the same batches; run in one task (:func:`zoo_study.transfer.job.run_transfer_pack`) they decode,
augment and preprocess each batch once, run the teacher and the frozen student once per batch, and
evaluate all students in one pass. Each member keeps its own id, its own result folder, its own job
record and failure record: done detection, resume and ``--dry-run`` are per job, exactly as without
packs. The runner forms packs at submission time from the jobs still to run (a finished member is never
redone), up to ``max_size`` members with equal :attr:`~pipelines.jobs.Job.pack` keys. Transfers key by
teacher, data and batches; their :attr:`~pipelines.jobs.Job.pack_group` is the student, so a pack holds
one pair's transfers, or (``ray.pack_students`` > 1) those of several students of one teacher, which then
share the batches and the teacher forward. On a GPU a pack's estimated memory (:mod:`pipelines.memory`:
the teacher once, every member's state, the largest member's activations) stays within
``ray.pack_gpu_memory_gb`` or 80% of the smallest GPU; a pack that still runs out of memory is split by
the runner and its parts retried.

A pack is submitted as a *carrier* job of stage ``<stage>_pack`` whose spec lists the members' specs and
ids; its executor returns each member's outputs under ``"<job_id>:<output name>"`` and a failed member's
error under ``"<job_id>:__error__"`` (text: the one-line error, a newline, the traceback).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Container, Mapping

from pipelines.jobs import Job
from pipelines.memory import pack_bytes

__all__ = ["ERROR_KEY", "carrier_for", "member_outcomes", "take_pack"]

ERROR_KEY = "__error__"


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
    """The one job submitted for a pack: members' specs and ids, the union of their outputs and inputs."""
    first = group[0]
    outputs = {f"{j.job_id}:{name}": path for j in group for name, path in j.outputs.items()}
    inputs = tuple(dict.fromkeys(rel for j in group for rel in j.inputs))
    spec = {"members": [dict(j.spec) for j in group], "job_ids": [j.job_id for j in group]}
    n_groups = len({j.pack_group for j in group})
    name = f"{len(group)} x {first.name}" if n_groups == 1 else f"{len(group)} transfers into {n_groups} students"
    return Job(f"{first.stage}_pack", spec, outputs, inputs=inputs, num_cpus=first.num_cpus,
               num_gpus=first.num_gpus, name=name, runtime=first.runtime)


def member_outcomes(group: list[Job], outputs: Mapping[str, Any]) -> list[tuple[Job, dict | None, str, str]]:
    """Per member: (job, its outputs by name or None, error, traceback) from a carrier's result."""
    out = []
    for job in group:
        err = outputs.get(f"{job.job_id}:{ERROR_KEY}")
        if err is not None:
            text = err.decode() if isinstance(err, (bytes, bytearray)) else str(err)
            line, _, tb = text.partition("\n")
            out.append((job, None, line, tb))
            continue
        mine = {name: outputs[f"{job.job_id}:{name}"] for name in job.outputs if f"{job.job_id}:{name}" in outputs}
        out.append((job, mine, "", ""))
    return out
