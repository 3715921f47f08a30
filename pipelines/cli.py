"""``zoo-study``: run a study, inspect it, query and report its results.

    zoo-study run [CONFIG] [--set key=value ...] [--stage zoo,predict,...] [--dry-run] [--address auto] [--wait]
    zoo-study status [CONFIG] [--set key=value ...]
    zoo-study sql RESULTS "SELECT ..." [--param name=value ...] [--out file.csv|file.parquet]
    zoo-study report RESULTS
    zoo-study hparams RESULTS            best grid setting per method, as TOML for a config
    zoo-study zoo [--paper STUDY]        list the embedded recipes or a paper model list
    zoo-study prefetch NAME [NAME ...]   download timm weights into the local cache (needs network)
    zoo-study prune [CONFIG ...] [--set key=value ...] [--apply]
                                         list (and move aside) results that no given config plans

Exit codes: 0 success, 1 some jobs failed (or a report, an ``sql --out`` file or a ``prefetch`` download
could not be written or fetched: one line), 2 misuse (bad arguments, config, results root or Ray address,
or a results root in use by another run; nothing was written), 130 interrupted (Ctrl-C; rerun to resume),
143 terminated (SIGTERM, handled like Ctrl-C: finished jobs kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from pipelines.signals import TERMINATION

LOG = logging.getLogger("zoo_study")
EXIT_MISUSE = 2


def _die(msg: str) -> NoReturn:
    print(f"zoo-study: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_MISUSE)


def _load(args):
    from zoo_study.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set or [])
    except ConfigError as err:
        _die(str(err))


def environment_info() -> dict:
    """Versions and hardware, saved next to the results so every number can be traced back."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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


def _plans(cfg, stages) -> dict:
    """Each job stage of ``stages`` planned (and its jobs hashed) once: ``{stage: jobs}``, or ``None`` for a
    stage that needs scores/pairs.parquet first. Raises ConfigError for a bad plan (unknown model ids)."""
    from pipelines.stages import JOB_STAGES, plan_stage

    return {s: plan_stage(cfg, s) for s in stages if s in JOB_STAGES}


def _print_plan(cfg, stages, plans, bench: str | None = None) -> None:
    from pipelines.jobs import plan

    root = cfg.results_root()
    print(f"study {cfg.study.name!r}: results in {root}")
    print(f"{'stage':<14} {'total':>7} {'done':>7} {'to run':>7}")
    for stage in stages:
        jobs = plans.get(stage)
        if stage == "report":
            print(f"{stage:<14} {'1':>7} {'-':>7} {'1':>7}   (always rebuilt)")
        elif jobs is None:
            print(f"{stage:<14} {'?':>7} {'?':>7} {'?':>7}   (planned after the score stage)")
        else:
            c = plan(jobs, root).get(stage)
            total, done, to_run = (c.total, c.done, c.to_run) if c else (0, 0, 0)
            print(f"{stage:<14} {total:>7} {done:>7} {to_run:>7}")
    if bench:
        _print_estimate(cfg, plans, bench)


def _print_estimate(cfg, plans, bench: str) -> None:
    """Accelerator-hours of the planned jobs still to run, from bench_gpu.py's per-model figures."""
    from pipelines.estimate import batch_note, data_sizes, estimate, format_estimate, load_bench
    from pipelines.jobs import done_flags

    try:
        figures = load_bench(bench)
    except ValueError as err:
        _die(str(err))
    jobs = [j for stage_jobs in plans.values() if stage_jobs for j in stage_jobs]
    jobs = [j for j, done in zip(jobs, done_flags(jobs, cfg.results_root())) if not done]
    r = cfg.ray
    est = estimate(jobs, figures, data_sizes(cfg), pack_size=r.pack_size, pack_students=r.pack_students,
                   pack_memory_bytes=r.pack_gpu_memory_gb * 1e9)  # as cmd_run hands them to run_jobs
    for line in format_estimate(est, figures.device, bench, batch_note(figures, jobs)):
        print(line)
    pending = [s for s, j in plans.items() if j is None and s != "report"]
    if pending:
        print(f"  stage(s) {', '.join(pending)} are planned after the score stage (not counted)")


def cmd_run(args) -> int:
    """Plan, check the results root and the Ray address, take the root's lock, run stage by stage.

    Exit 2 (nothing written) for a bad config, results root or Ray address, or a root in use by another
    run (unless ``--wait``); 130 after Ctrl-C, 143 after SIGTERM (finished jobs kept); 1 when a job failed or was skipped.
    """
    import os

    from pipelines import backends
    from pipelines.lock import LockHeld, ResultsLock, check_results_root
    from pipelines.results_root import claim as claim_results_root
    from pipelines.stages import parse_stages
    from pipelines.validate import check_stage_inputs, validate_study
    from pipelines.validate_resources import check_machine
    from zoo_study.config import ConfigError
    from zoo_study.store import ResultsLayout

    if args.bench is not None and not args.dry_run:
        _die(f"--bench {args.bench} estimates a plan and needs --dry-run; add --dry-run (nothing runs) or drop --bench")
    cfg = _load(args)
    address = args.address if args.address is not None else (cfg.ray.address or None)
    try:
        stages = parse_stages(args.stage)
        # the whole study against its inputs, and against this machine unless it only plans
        validate_study(cfg, stages, address, machine=not args.dry_run)
        plans = _plans(cfg, stages)  # every plan validated (model ids, pairs) before anything is written
        if not args.dry_run:
            check_stage_inputs(cfg, stages, plans)
    except ConfigError as err:
        _die(str(err))
    layout = ResultsLayout(cfg.results_root())
    if problem := check_results_root(layout.root):  # also for --dry-run: the plan must not promise a bad root
        _die(problem)
    if args.dry_run:
        _print_plan(cfg, stages, plans, args.bench)
        # a plan for another machine (a cluster, a GPU node) or a later root is fine; say what a run would refuse
        for check in (lambda: check_stage_inputs(cfg, stages, plans), lambda: check_machine(cfg, address)):
            try:
                check()
            except ConfigError as err:
                print(f"zoo-study: warning: a run now would be refused: {err}", file=sys.stderr)
        return 0
    ray_was_up = backends.ray_is_initialized()
    lock = ResultsLock(layout.root)
    try:
        try:
            if address != backends.LOCAL and (address or os.environ.get("RAY_ADDRESS")):
                LOG.info("%s", backends.ensure_ray(address))  # join now: a bad address fails before any write
        except backends.RayUnavailable as err:
            _die(str(err))
        try:
            layout.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(wait=args.wait, log=LOG)
            claim_results_root(layout.root, LOG)  # the marker that makes it ours (pipelines/results_root.py)
            backends.reap_stale_session(layout.root, LOG)  # Ray processes of a killed earlier run
        except LockHeld as err:
            _die(str(err))
        except OSError as err:
            _die(f"results root {layout.root} is not writable: {err.strerror or err}")
        return _run_stages(args, cfg, stages, plans, layout, address)
    finally:
        if not ray_was_up:
            backends.shutdown_ray()  # the local instance this run started (or its connection to a cluster)
            if lock.held:
                backends.forget_local_session(layout.root)
        lock.release()


# stages that read only the zoo, predictions and scores, never each other's outputs: they run as one wave,
# so a core freed by one stage's last job takes the next stage's work instead of idling until it ends
INDEPENDENT_STAGES = ("semantics", "transfer", "multi_teacher", "hparam")


def _stage_groups(stages: list[str]) -> list[list[str]]:
    """Consecutive independent stages merged into one group (one wave); every other stage alone."""
    groups: list[list[str]] = []
    for stage in stages:
        if groups and stage in INDEPENDENT_STAGES and groups[-1][-1] in INDEPENDENT_STAGES:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _run_stages(args, cfg, stages, plans, layout, address) -> int:
    from pipelines.backends import RayUnavailable
    from pipelines.lock import remove_temp_files
    from pipelines.prepare import needs_images, prepare_study_data
    from pipelines.runner import RunInterrupted, run_jobs
    from pipelines.stages import plan_stage
    from zoo_study.store import write_text_atomic

    if n := remove_temp_files(layout.root):
        LOG.info("removed %d temp file(s) left by an interrupted run", n)
    write_text_atomic(cfg.to_toml(), layout.config_file)
    write_text_atomic(json.dumps(environment_info(), indent=2), layout.environment_file)
    LOG.info("study %r: results in %s", cfg.study.name, layout.root)
    failed = finished = 0
    score_ran = prepared = False
    t0 = time.perf_counter()
    for group in _stage_groups(stages):
        if group == ["report"]:
            from analysis.report import ReportError, build_report

            try:
                print(f"report: {build_report(layout.root)}")
            except ReportError as err:  # a full disk: one line, the old report kept, the run failed
                print(f"report: {err}", file=sys.stderr)
                failed += 1
            continue
        jobs = []
        for stage in group:
            planned = plans[stage]
            if planned is None or score_ran:  # planned now from the pairs the score stage just wrote
                planned = plan_stage(cfg, stage)
            if planned is None:
                print(f"{stage}: needs scores/pairs.parquet; run the score stage first", file=sys.stderr)
                failed += 1
                continue
            if planned:
                LOG.info("stage %s: %d job(s)", stage, len(planned))
            jobs += planned
        if not jobs:
            continue
        if not prepared and needs_images(group):  # the data step: index + image cache, on CPUs, once
            prepared = True
            try:
                prepare_study_data(cfg, layout, plans)
            except (OSError, RuntimeError, ValueError) as err:
                print(f"zoo-study: error: preparing the images of {cfg.data.root or 'the dataset'}: {err}",
                      file=sys.stderr)
                return 1
        try:
            report = run_jobs([jobs], layout.root, address=address, num_cpus=cfg.ray.num_cpus, pack_size=cfg.ray.pack_size,
                              pack_students=cfg.ray.pack_students, pack_memory_bytes=cfg.ray.pack_gpu_memory_gb * 1e9,
                              max_retries=cfg.ray.max_retries, progress=not args.no_progress)
        except RunInterrupted as stop:
            print(f"interrupted: {finished + stop.report.ran} job(s) finished, {stop.cancelled} cancelled; "
                  "rerun to resume", file=sys.stderr)
            return TERMINATION.exit_code
        except RayUnavailable as err:
            _die(str(err))
        print(report.summary())
        finished += report.ran
        failed += report.failed + report.skipped
        score_ran = score_ran or ("score" in group and report.ran > 0)
    print(f"done in {time.perf_counter() - t0:.1f} s; results in {layout.root}")
    return 1 if failed else 0


def cmd_status(args) -> int:
    """Jobs per stage of a study. CONFIG may also be a results root: its ``config.toml`` (the resolved config
    of its last run) is read then."""
    from pipelines.records import status
    from pipelines.stages import JOB_STAGES
    from zoo_study.config import ConfigError
    from zoo_study.store import ResultsLayout

    if args.config and Path(args.config).expanduser().is_dir():
        layout = ResultsLayout(Path(args.config).expanduser())
        if not layout.config_file.is_file():
            _die(f"{args.config!r} is a folder but not a results root (no config.toml); give the study's TOML "
                 "or the results root it writes to, e.g. runs/demo")
        args.config = str(layout.config_file)
    cfg = _load(args)
    try:
        plans = _plans(cfg, JOB_STAGES)
    except ConfigError as err:
        _die(str(err))
    st = status(cfg.results_root(), [j for jobs in plans.values() for j in jobs or []])
    print(f"study {cfg.study.name!r}: results in {cfg.results_root()}")
    print(st.summary())
    return 0


def cmd_prune(args) -> int:
    """List the result files under the configs' common root that none of them plans (pipelines/prune.py);
    with ``--apply``, move them to ``<root>/_pruned/<UTC time>/`` while holding the root's lock.

    Exit 2 (nothing moved) for a bad config, configs of different roots, a stage that cannot be planned
    yet (transfers are planned from the scores), or a root in use by a run."""
    from pipelines.lock import LockHeld, ResultsLock
    from pipelines.prune import PRUNED_DIR, common_root, find_stale, move_stale
    from pipelines.stages import JOB_STAGES
    from zoo_study.config import ConfigError, load_config
    from zoo_study.store import ResultsLayout

    names = args.configs or [None]
    jobs, roots = [], []
    for name in names:
        shown = name or "the embedded demo"
        try:
            cfg = load_config(name, args.set or [])
            plans = _plans(cfg, JOB_STAGES)
        except ConfigError as err:
            _die(f"{shown}: {err}")
        if unplanned := [s for s, p in plans.items() if p is None]:
            command = " ".join(["zoo-study run", *([name] if name else []), "--stage zoo,predict,score"])
            _die(f"{shown}: stage(s) {', '.join(unplanned)} are planned from the scores, which "
                 f"{cfg.results_root()} does not have yet, so which of its results are current is unknown; "
                 f"run `{command}` first")
        roots.append((shown, cfg.results_root()))
        jobs += [j for stage_jobs in plans.values() for j in stage_jobs]
    try:
        root = common_root(roots)
    except ValueError as err:
        _die(str(err))
    if not ResultsLayout(root).is_results_root():
        _die(f"{root} holds no study results (no config.toml and no result table files); nothing to prune")
    lock = ResultsLock(root)
    try:
        lock.acquire()  # also for listing: a running study's half-planned files are not stale
    except LockHeld as err:
        _die(str(err))
    try:
        plan = find_stale(root, jobs)
        print(plan.summary())
        if not plan.stale:
            return 0
        if not args.apply:
            print(f"nothing moved; rerun with --apply to move them to {root / PRUNED_DIR}/<time>/ "
                  f"(give every config that writes to {root})")
            return 0
        dest = move_stale(plan)
        LOG.info("moved %d file(s) to %s; move them back to restore them, delete the folder to free the space",
                 len(plan.stale), dest)
        return 0
    finally:
        lock.release()


def _root_problem(results: str) -> str | None:
    """Why ``results`` cannot be read as a results root (missing, or a file), or None."""
    path = Path(results).expanduser()
    if not path.exists():
        return f"results root {results!r} does not exist"
    if not path.is_dir():
        return f"results root {results!r} is a file, not a results root folder (e.g. runs/demo)"
    return None


def cmd_sql(args) -> int:
    """Run a query over a results root. Exit 2 with one line for bad arguments, a bad query or ``--out``
    (checked before the query runs); Ctrl-C stops a running query (exit 130, via :func:`main`)."""
    from analysis.sql_cli import QueryError, check_max_rows, format_table, list_queries, parse_params, run_sql

    if args.list:
        for name, desc in list_queries():
            print(f"{name:<24} {desc}")
        return 0
    if not args.results or not args.query:
        _die("sql needs RESULTS and QUERY (SQL text, a .sql file or a named query; --list shows the names)")
    if problem := _root_problem(args.results):
        _die(problem)
    try:
        check_max_rows(args.max_rows)
        table = run_sql(args.results, args.query, parse_params(args.param or []), args.out)
    except (QueryError, ValueError, FileNotFoundError) as err:
        _die(str(err).splitlines()[0])
    except OSError as err:  # --out could not be written (full disk, permissions): nothing half-written
        print(f"zoo-study: error: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    if args.out:
        print(f"wrote {table.num_rows} row(s) to {args.out}")
    else:
        print(format_table(table, args.max_rows))
    return 0


def cmd_report(args) -> int:
    """(Re)build the report. Exit 2 for a folder that is not a results root; 1, with one line and the old
    report kept, when it cannot be written (full disk)."""
    from analysis.report import ReportError, build_report
    from zoo_study.store import ResultsLayout

    if problem := _root_problem(args.results):
        _die(problem)
    if not ResultsLayout(args.results).is_results_root():  # a report must not land in any folder
        _die(f"{args.results!r} is not a results root (no config.toml and no result files); "
             "give the folder of a study, e.g. runs/demo")
    try:
        print(build_report(args.results))
    except ReportError as err:
        print(f"zoo-study: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_hparams(args) -> int:
    """Best grid setting per method (mean delta over pairs) and the TOML that makes a study use it."""
    import json

    import pyarrow as pa

    from zoo_study.store import TRANSFER_SUMMARY_SCHEMA, ResultsLayout, read_parquet_checked
    from zoo_study.transfer.hparams import best_per_method

    layout = ResultsLayout(args.results)
    tables = [t for p in sorted(layout.hparams_dir.glob("*.parquet"))
              if (t := read_parquet_checked(p, TRANSFER_SUMMARY_SCHEMA)) is not None]
    if not tables:
        _die(f"no grid results in {layout.hparams_dir}; run a study with hparam_search.enabled = true")
    best = best_per_method(pa.concat_tables(tables))
    print(f"{'method':<14} {'settings':>8} {'pairs':>5} {'mean delta':>10} {'success':>8}  setting")
    for r in best.to_pylist():
        print(f"{r['method']:<14} {r['n_settings']:>8} {r['n_pairs']:>5} {r['mean_delta_last'] * 100:>9.2f}% "
              f"{r['success_rate'] * 100:>7.0f}%  lr={r['base_lr']:g} T={r['temperature']:g} {r['hparams_json']}")
    print("\n# paste into a study config to use these settings:")
    for r in best.to_pylist():
        hp = {"lr": r["base_lr"], "temperature": r["temperature"], **json.loads(r["hparams_json"])}
        print(f"[transfer.hparams.{r['method']}]")
        for k, v in hp.items():
            print(f"{k} = {json.dumps(v)}")
    return 0


def cmd_zoo(args) -> int:
    if args.paper:
        from zoo_study.zoo.catalog import paper_models

        rows = [r for r in paper_models() if r["study"] == args.paper]
        if not rows:
            _die(f"unknown paper study {args.paper!r}; valid: imagenet_10pct, imagenet_full, multi_teacher")
        for r in rows:
            print(f"{r['role']:<8} {r['timm_name']:<45} {r['family']:<12} {r['reported_top1']:>6} {r['params_m']:>8}")
        return 0
    from zoo_study.zoo.recipes import ALL_RECIPES, EMBEDDED_RECIPES

    for r in ALL_RECIPES:
        tag = "" if r in EMBEDDED_RECIPES else "  (optional: name it in zoo.embedded)"
        print(f"{r.model_id:<24} {r.arch:<22} {r.input_size:>3}px epochs {r.epochs:<4} ls {r.label_smoothing:<4} "
              f"mixup {r.mixup_alpha:<4} aug {r.augment:<9} seed {r.seed}{tag}")
    return 0


def cmd_prefetch(args) -> int:
    """Download weights. Exit 2 for a name timm does not know; 1, with one line naming the model and the
    reason, when a download fails (no network, offline mode, a hub error)."""
    import os

    from zoo_study.zoo.loading import ModelLoadError, prefetch

    for name in args.names:
        try:
            prefetch([name])
        except ModelLoadError as err:
            _die(str(err))
        except OSError as err:  # hub and HTTP errors are OSErrors (no network, offline cache miss, 404)
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            print(f"zoo-study: error: cannot download {name}{offline}: {reason}; prefetch needs network "
                  "access to the Hugging Face hub", file=sys.stderr)
            return 1
        print(f"cached {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo-study", description="Find and transfer complementary knowledge between pretrained classifiers.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("config", nargs="?", default=None, help="study TOML (default: the embedded demo)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. transfer.epochs=2")

    r = sub.add_parser("run", help="run a study (default: the embedded demo)")
    config_args(r)
    r.add_argument("--stage", help="comma-separated subset of: zoo,predict,score,transfer,multi_teacher,hparam,report")
    r.add_argument("--dry-run", action="store_true", help="print jobs per stage (total, done, to run) and exit")
    r.add_argument("--address", default=None, help="Ray address: 'auto' joins a cluster, 'local' runs without Ray")
    r.add_argument("--wait", action="store_true", help="if another run holds the results root, wait for it to end")
    r.add_argument("--bench", default=None, metavar="JSON",
                   help="with --dry-run: estimate the transfers' accelerator-hours from benchmarks/bench_gpu.py's output")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="jobs per stage and failures of a study (CONFIG or its results root)")
    config_args(s)
    s.set_defaults(fn=cmd_status)

    q = sub.add_parser("sql", help="run DuckDB SQL over a results root")
    q.add_argument("results", nargs="?", help="results root, e.g. runs/demo")
    q.add_argument("query", nargs="?", help="SQL text, a .sql file, or a named query (--list)")
    q.add_argument("--param", action="append", metavar="NAME=VALUE", help="bound parameter ($name in the SQL)")
    q.add_argument("--out", help="write the result to .csv or .parquet instead of printing")
    q.add_argument("--max-rows", type=int, default=40, help="rows to print (default 40; 0 prints every row)")
    q.add_argument("--list", action="store_true", help="list the named queries")
    q.set_defaults(fn=cmd_sql)

    rp = sub.add_parser("report", help="(re)build RESULTS/report/index.html")
    rp.add_argument("results")
    rp.set_defaults(fn=cmd_report)

    hp = sub.add_parser("hparams", help="best hyper-parameter setting per method from a grid search")
    hp.add_argument("results")
    hp.set_defaults(fn=cmd_hparams)

    z = sub.add_parser("zoo", help="list the embedded zoo's recipes or a paper model list")
    z.add_argument("--paper", help="imagenet_10pct | imagenet_full | multi_teacher")
    z.set_defaults(fn=cmd_zoo)

    pf = sub.add_parser("prefetch", help="download timm pretrained weights into the local cache")
    pf.add_argument("names", nargs="+")
    pf.set_defaults(fn=cmd_prefetch)
    pr = sub.add_parser("prune", help="list (with --apply: move aside) results that no given config plans")
    pr.add_argument("configs", nargs="*", metavar="CONFIG",
                    help="every study TOML that writes to the root (default: the embedded demo)")
    pr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value in each config")
    pr.add_argument("--apply", action="store_true", help="move the listed files to <root>/_pruned/<time>/")
    pr.set_defaults(fn=cmd_prune)

    from analysis.recommend_cli import add_parser as add_recommend

    add_recommend(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    TERMINATION.install()
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside a run's job loop (which reports itself)
        print("zoo-study: interrupted", file=sys.stderr)
        return TERMINATION.exit_code
    finally:
        TERMINATION.uninstall()


if __name__ == "__main__":
    sys.exit(main())
