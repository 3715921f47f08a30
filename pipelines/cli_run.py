"""``zoo-study run``: validate and plan the Study once, check the root and Ray, take the lock, run the waves.

Exit codes: 2 (nothing written) for a bad config, results root or Ray address, or a root in use by another
run (unless ``--wait``); 130 after Ctrl-C, 143 after SIGTERM (finished jobs kept); 1 when a job failed or
was skipped.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata

from pipelines.cli_common import LOG, die, load_study
from pipelines.signals import TERMINATION
from pipelines.stages import count, get_stage, parse_stages, stage_groups
from pipelines.study import Study
from zoo_study.config import ConfigError

__all__ = ["cmd_run", "environment_info", "print_plan"]


def environment_info() -> dict:
    """Versions and hardware, saved next to the results so every number can be traced back."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for pkg in ("zoo-study", "torch", "torchvision", "timm", "ray", "pyarrow", "duckdb", "numpy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # pragma: no cover
        info["cuda_error"] = repr(exc)
    return info


def print_plan(study: Study, stages: list[str], plans: dict, bench: str | None = None) -> None:
    """Jobs per stage (total, done, to run) of a dry run, and with ``bench`` the accelerator-hours."""
    cfg = study.cfg
    root = cfg.results_root()
    counted = count([j for jobs in plans.values() for j in jobs or ()], root).stages
    print(f"study {cfg.study.name!r}: results in {root}")
    print(f"{'stage':<14} {'total':>7} {'done':>7} {'to run':>7}")
    for stage in stages:
        if stage not in plans:
            print(f"{stage:<14} {'1':>7} {'-':>7} {'1':>7}   (always rebuilt)")
        elif plans[stage] is None:
            print(f"{stage:<14} {'?':>7} {'?':>7} {'?':>7}   (planned after the score stage)")
        else:
            c = counted.get(stage)
            total, done, to_run = (c.total, c.done, c.to_run) if c else (0, 0, 0)
            print(f"{stage:<14} {total:>7} {done:>7} {to_run:>7}")
    if bench:
        _print_estimate(study, plans, bench)


def _print_estimate(study: Study, plans: dict, bench: str) -> None:
    """Accelerator-hours of the planned jobs still to run, from bench_gpu.py's per-model figures."""
    from pipelines.estimate import batch_note, data_sizes, estimate, format_estimate, load_bench
    from pipelines.stages import done_flags

    cfg = study.cfg
    try:
        figures = load_bench(bench)
    except ValueError as err:
        die(str(err))
    jobs = [j for stage_jobs in plans.values() if stage_jobs for j in stage_jobs]
    jobs = [j for j, done in zip(jobs, done_flags(jobs, cfg.results_root())) if not done]
    r = cfg.ray
    est = estimate(jobs, figures, data_sizes(cfg), pack_size=r.pack_size, pack_students=r.pack_students,
                   pack_memory_bytes=r.pack_gpu_memory_gb * 1e9)  # as cmd_run hands them to run_jobs
    for line in format_estimate(est, figures.device, bench, batch_note(figures, jobs)):
        print(line)
    pending = [s for s, j in plans.items() if j is None]
    if pending:
        print(f"  stage(s) {', '.join(pending)} are planned after the score stage (not counted)")


def _dry_run(args, study: Study, stages: list[str], plans: dict, address: str | None) -> int:
    """Print the plan; a plan for another machine (a cluster, a GPU node) or a later root is fine: say
    what a run would refuse."""
    from pipelines.validate import check_stage_inputs
    from pipelines.validate_resources import check_machine

    print_plan(study, stages, plans, args.bench)
    for check in (lambda: check_stage_inputs(study.cfg, stages, plans), lambda: check_machine(study.cfg, address)):
        try:
            check()
        except ConfigError as err:
            print(f"zoo-study: warning: a run now would be refused: {err}", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    """Plan, check the results root and the Ray address, take the root's lock, run stage by stage."""
    from pipelines import backends
    from pipelines.lock import LockHeld, ResultsLock, check_results_root
    from pipelines.results_root import claim as claim_results_root
    from pipelines.validate import check_stage_inputs, validate_study

    if args.bench is not None and not args.dry_run:
        die(f"--bench {args.bench} estimates a plan and needs --dry-run; add --dry-run (nothing runs) or drop --bench")
    study = load_study(args)
    address = args.address if args.address is not None else (study.cfg.ray.address or None)
    try:
        stages = parse_stages(args.stage)
        # the whole study against its inputs, and against this machine unless it only plans
        validate_study(study, stages, address, machine=not args.dry_run)
        plans = {}  # every plan validated (model ids, pairs) before anything is written
        for stage in stages:
            if get_stage(stage).planner is not None:
                plans[stage] = study.plan(stage)
        if not args.dry_run:
            check_stage_inputs(study.cfg, stages, plans)
    except ConfigError as err:
        die(str(err))
    layout = study.layout
    if problem := check_results_root(layout.root):  # also for --dry-run: the plan must not promise a bad root
        die(problem)
    if args.dry_run:
        return _dry_run(args, study, stages, plans, address)
    ray_was_up = backends.ray_is_initialized()
    lock = ResultsLock(layout.root)
    try:
        try:
            if address != backends.LOCAL and (address or os.environ.get("RAY_ADDRESS")):
                LOG.info("%s", backends.ensure_ray(address))  # join now: a bad address fails before any write
        except backends.RayUnavailable as err:
            die(str(err))
        try:
            layout.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(wait=args.wait, log=LOG)
            claim_results_root(layout.root, LOG)  # the marker that makes it ours (pipelines/results_root.py)
            backends.reap_stale_session(layout.root, LOG)  # Ray processes of a killed earlier run
        except LockHeld as err:
            die(str(err))
        except OSError as err:
            die(f"results root {layout.root} is not writable: {err.strerror or err}")
        run = _Run(args, study, plans, address)  # writes config.toml and environment.json
        for group in stage_groups(stages):
            code = run.report() if group == ["report"] else run.group(group)
            if code is not None:
                return code
        return run.done()
    finally:
        if not ray_was_up:
            backends.shutdown_ray()  # the local instance this run started (or its connection to a cluster)
            if lock.held:
                backends.forget_local_session(layout.root)
        lock.release()


class _Run:
    """One run's waves: each group of stages (pipelines/stages.py: wave groups) planned from the Study,
    prepared, run, counted. Made once the root is locked: it writes the resolved config and the environment."""

    def __init__(self, args, study: Study, plans: dict, address: str | None):
        from pipelines.lock import remove_temp_files
        from zoo_study.store import write_text_atomic

        self.args, self.study, self.plans, self.address = args, study, plans, address
        self.failed = self.finished = 0
        self.prepared = False
        self.t0 = time.perf_counter()
        layout = study.layout
        if n := remove_temp_files(layout.root):
            LOG.info("removed %d temp file(s) left by an interrupted run", n)
        write_text_atomic(study.cfg.to_toml(), layout.config_file)
        write_text_atomic(json.dumps(environment_info(), indent=2), layout.environment_file)
        LOG.info("study %r: results in %s", study.cfg.study.name, layout.root)

    def done(self) -> int:
        """1 when a job failed or was skipped, else 0."""
        print(f"done in {time.perf_counter() - self.t0:.1f} s; results in {self.study.layout.root}")
        return 1 if self.failed else 0

    def report(self) -> None:
        """Build the report (always rebuilt); a failure counts as a failed job."""
        from analysis.report import ReportError, build_report

        try:
            print(f"report: {build_report(self.study.layout.root)}")
        except ReportError as err:  # a full disk: one line, the old report kept, the run failed
            print(f"report: {err}", file=sys.stderr)
            self.failed += 1

    def _jobs(self, group: list[str]) -> list:
        """The group's jobs, from the Study's plans (planned again after the score stage wrote the scores)."""
        jobs = []
        for stage in group:
            planned = self.study.plan(stage)
            if planned is None:
                print(f"{stage}: needs scores/pairs.parquet; run the score stage first", file=sys.stderr)
                self.failed += 1
                continue
            if planned:
                LOG.info("stage %s: %d job(s)", stage, len(planned))
            jobs += planned
        return jobs

    def group(self, group: list[str]) -> int | None:
        """Run one group's jobs as one wave; an exit code when the run must stop, else None."""
        from pipelines.backends import RayUnavailable
        from pipelines.prepare import needs_images, prepare_study_data
        from pipelines.runner import RunInterrupted, run_jobs

        cfg = self.study.cfg
        jobs = self._jobs(group)
        if not jobs:
            return None
        if not self.prepared and needs_images(group):  # the data step: index + image cache, on CPUs, once
            self.prepared = True
            try:
                prepare_study_data(self.study, self.plans)
            except (OSError, RuntimeError, ValueError) as err:
                print(f"zoo-study: error: preparing the images of {cfg.data.root or 'the dataset'}: {err}",
                      file=sys.stderr)
                return 1
        try:
            report = run_jobs([jobs], self.study.layout.root, address=self.address, num_cpus=cfg.ray.num_cpus,
                              pack_size=cfg.ray.pack_size, pack_students=cfg.ray.pack_students,
                              pack_memory_bytes=cfg.ray.pack_gpu_memory_gb * 1e9, max_retries=cfg.ray.max_retries,
                              progress=not self.args.no_progress)
        except RunInterrupted as stop:
            print(f"interrupted: {self.finished + stop.report.ran} job(s) finished, {stop.cancelled} cancelled; "
                  "rerun to resume", file=sys.stderr)
            return TERMINATION.exit_code
        except RayUnavailable as err:
            die(str(err))
        print(report.summary())
        self.finished += report.ran
        self.failed += report.failed + report.skipped
        if "score" in group and report.ran > 0:  # the stages planned from the scores are planned again
            self.study.forget_scores()
        return None
