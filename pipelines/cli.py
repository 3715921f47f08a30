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
import logging
import sys
from pathlib import Path

from pipelines.cli_common import EXIT_MISUSE, LOG, die  # noqa: F401  (EXIT_MISUSE: the CLI's misuse code)
from pipelines.cli_run import cmd_run
from pipelines.cli_study import cmd_prune, cmd_status
from pipelines.signals import TERMINATION
from pipelines.stages import stage_names


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
        die("sql needs RESULTS and QUERY (SQL text, a .sql file or a named query; --list shows the names)")
    if problem := _root_problem(args.results):
        die(problem)
    try:
        check_max_rows(args.max_rows)
        table = run_sql(args.results, args.query, parse_params(args.param or []), args.out)
    except (QueryError, ValueError, FileNotFoundError) as err:
        die(str(err).splitlines()[0])
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
        die(problem)
    if not ResultsLayout(args.results).is_results_root():  # a report must not land in any folder
        die(f"{args.results!r} is not a results root (no config.toml and no result files); "
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
        die(f"no grid results in {layout.hparams_dir}; run a study with hparam_search.enabled = true")
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
            die(f"unknown paper study {args.paper!r}; valid: imagenet_10pct, imagenet_full, multi_teacher")
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
            die(str(err))
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
    r.add_argument("--stage", help=f"comma-separated subset of: {','.join(stage_names())}")
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
