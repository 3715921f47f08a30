"""Benchmark: what the job layer costs per job, and how fast a finished study resumes.

Three measurements over N trivial jobs (default 500; each writes one 1-row Parquet file through the
driver, exactly as a real job's result is written), printed side by side:

1. **Serial**: ``run_jobs(..., use_ray=False)``, the in-process backend: executor call + atomic write +
   done check. This is the floor: any real pipeline pays it.
2. **Ray**: the same jobs as one Ray task each on a warm local instance (startup measured apart, since a
   CLI pays it once per process). ``ray / serial`` is the per-job scheduling overhead as a ratio; the
   absolute ms/job says whether it matters next to jobs that take seconds to minutes.
3. **Resume**: ``run_jobs`` again on the finished study (every job done): plan, check every output
   reads back, skip. Also ``count()`` alone, which is what ``--dry-run`` / ``status`` pay.

Usage::

    python benchmarks/bench_scheduling.py                  # 500 jobs, Ray with all local CPUs
    python benchmarks/bench_scheduling.py --jobs 2000 --num-cpus 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the trivial executors: test code
from helpers import runner_executors as T  # noqa: E402

T.importable_by_workers()  # Ray workers import them by module path
from pipelines.backends import ensure_ray  # noqa: E402
from pipelines.jobs import Job  # noqa: E402
from pipelines.runner import run_jobs as _run_jobs  # noqa: E402
from pipelines.stages import count  # noqa: E402

run_jobs = partial(_run_jobs, executors=T.EXECUTORS)


def make_jobs(n: int, tag: str) -> list[Job]:
    return [Job(T.EMIT, {"value": i, "bench": tag}, {"row": f"bench/v{i:05d}.parquet"}) for i in range(n)]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500, help="number of trivial jobs (default 500)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    ap.add_argument("--root", type=Path, default=None,
                    help="scratch folder (default: a temp dir, removed); /dev/shm/... takes fsync out")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each kind; the best is kept (default 3)")
    args = ap.parse_args()
    if args.jobs < 1 or args.repeat < 1:
        ap.error(f"--jobs and --repeat must be >= 1, got {args.jobs}, {args.repeat}")
    logging.basicConfig(level=logging.WARNING)

    scratch = Path(args.root or tempfile.mkdtemp(prefix="bench_sched_"))
    scratch.mkdir(parents=True, exist_ok=True)
    n = args.jobs
    try:
        # Ray startup apart, then a warm-up wave so workers have imported the executor module
        t_init, desc = timed(ensure_ray, num_cpus=args.num_cpus, object_store_memory=200 * 2**20)
        t_warm, _ = timed(run_jobs, make_jobs(2 * args.num_cpus, "warm"), scratch / "warm", progress=False)
        run_jobs(make_jobs(20, "warm-serial"), scratch / "warm", use_ray=False, progress=False)

        # 1 and 2, interleaved so that disk / neighbour noise hits both alike; fresh ids and roots each time
        t_serial = t_ray = float("inf")
        for r in range(args.repeat):
            t, rep = timed(run_jobs, make_jobs(n, f"serial{r}"), scratch / f"serial{r}", use_ray=False,
                           progress=False)
            assert rep.ran == n and rep.ok, rep.summary()
            t_serial = min(t_serial, t)
            jobs = make_jobs(n, f"ray{r}")
            t, rep = timed(run_jobs, jobs, scratch / f"ray{r}", progress=False)
            assert rep.ran == n and rep.ok, rep.summary()
            t_ray = min(t_ray, t)
        done_root = scratch / f"ray{args.repeat - 1}"

        # 3. resume of the finished study, and planning alone
        t_resume = t_plan = float("inf")
        for _ in range(args.repeat):
            t, rep = timed(run_jobs, jobs, done_root, progress=False)
            assert rep.ran == 0 and rep.stages[T.EMIT].done_before == n, rep.summary()
            t_resume = min(t_resume, t)
            t, counted = timed(count, jobs, done_root)
            assert counted.stages[T.EMIT].done == n
            t_plan = min(t_plan, t)
    finally:
        if args.root is None:
            shutil.rmtree(scratch, ignore_errors=True)

    ms = lambda t: 1000.0 * t / n  # noqa: E731
    print(f"{n} trivial jobs (one 1-row Parquet output each); {desc}; best of {args.repeat}; root {scratch}")
    print(f"  serial in-process     {t_serial:7.2f} s   {ms(t_serial):6.2f} ms/job")
    print(f"  ray, warm instance    {t_ray:7.2f} s   {ms(t_ray):6.2f} ms/job   "
          f"ratio ray/serial = {t_ray / t_serial:.2f}x")
    print(f"     ray startup        {t_init:7.2f} s   (ray.init, once per process)")
    print(f"     first wave         {t_warm:7.2f} s   ({2 * args.num_cpus} jobs: worker start + imports)")
    print(f"  resume, all {n} done  {t_resume:7.2f} s   {ms(t_resume):6.2f} ms/job  (run_jobs: plan + skip)")
    print(f"     count() alone      {t_plan:7.2f} s   {ms(t_plan):6.2f} ms/job")


if __name__ == "__main__":
    main()
