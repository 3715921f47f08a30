"""``zoo-study recommend RESULTS --student ID``: the command around :mod:`analysis.recommend`.

Every bad input is one line and exit 2 before anything is read or written (the CLI's convention)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.csv as pacsv

from analysis.db import connect
from analysis.recommend import as_dict, recommend, render_text
from zoo_study.methods import method_names
from zoo_study.store import ResultsLayout, write_parquet_atomic

OUT_SUFFIXES = (".csv", ".parquet", ".json")


def add_parser(sub) -> None:
    """Register the ``recommend`` subcommand."""
    rc = sub.add_parser("recommend", help="rank every scored teacher of a student by its predicted transfer delta")
    rc.add_argument("results", help="results root, e.g. runs/demo")
    rc.add_argument("--student", required=True, help="the student's model id")
    rc.add_argument("--method", default="kl_dp", help="transfer method the ranking is for (default: kl_dp)")
    rc.add_argument("--top", type=int, default=10, help="show the first N teachers (default 10; 0: all)")
    rc.add_argument("--alpha", type=float, default=0.1, help="1 - coverage of the prediction intervals (default 0.1)")
    rc.add_argument("--out", help="also write the ranking to a .csv, .parquet or .json file (outside RESULTS)")
    rc.add_argument("--pilot", type=int, metavar="STEPS",
                    help="run a short transfer of about STEPS steps (the study's own, through the pipeline: resumable, "
                    "cached, under RESULTS/pilot/) for the first --pilot-top teachers and every pair with a finished "
                    "transfer, re-rank with the pilots' early delta/gain/loss, and report whether that helps the "
                    "held-out ranking and at what compute")
    rc.add_argument("--pilot-top", type=int, metavar="K", help="teachers of the student that get a pilot (default 3)")
    rc.add_argument("--config", help="with --pilot: the study's config, when RESULTS has no config.toml")
    rc.set_defaults(fn=cmd_recommend)


def _die(msg: str) -> None:
    print(f"zoo-study recommend: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _valid_methods() -> list[str]:
    """Registered method names (an unsupervised twin, kl_dp_unsup, is a registered method of its own)."""
    return method_names()


def _check(args) -> Path | None:
    root = Path(args.results)
    if not root.exists():
        _die(f"results root {args.results!r} does not exist")
    if not root.is_dir():
        _die(f"results root {args.results!r} is a file, not a folder; give the folder of a study, e.g. runs/demo")
    if not (root / "scores" / "pairs.parquet").is_file():
        _die(f"{args.results!r} has no scored pairs (scores/pairs.parquet); run the score stage first: "
             f"zoo-study run CONFIG --stage zoo,predict,score")
    if args.method not in _valid_methods():
        _die(f"unknown method {args.method!r}; valid: {', '.join(_valid_methods())}")
    if args.top < 0:
        _die(f"--top must be >= 0 (0 shows every teacher), got {args.top}")
    if not 0 < args.alpha < 1:
        _die(f"--alpha must be in (0, 1), got {args.alpha}")
    _check_pilot(args, root)
    if not args.out:
        return None
    out = Path(args.out)
    if out.suffix not in OUT_SUFFIXES:
        _die(f"--out {args.out!r}: use one of {', '.join(OUT_SUFFIXES)}")
    if out.is_dir():
        _die(f"--out {args.out!r} is a folder; give a file name")
    resolved, root_resolved = out.resolve(), root.resolve()
    if resolved == root_resolved or root_resolved in resolved.parents:
        _die(f"--out {args.out!r} is inside the results root; results roots hold the study's own files only")
    if not resolved.parent.is_dir():
        _die(f"--out {args.out!r}: folder {str(resolved.parent)!r} does not exist")
    return out


def _check_pilot(args, root: Path) -> None:
    """--pilot and its companions, before anything runs."""
    if args.pilot is None:
        for flag, value in (("--pilot-top", args.pilot_top), ("--config", args.config)):
            if value is not None:
                _die(f"{flag} is only used with --pilot STEPS")
        return
    if args.pilot <= 0:
        _die(f"--pilot must be >= 1 (training steps of each pilot transfer), got {args.pilot}")
    if args.pilot_top is not None and args.pilot_top < 1:
        _die(f"--pilot-top must be >= 1 (teachers that get a pilot), got {args.pilot_top}")
    if args.method not in method_names():
        _die(f"--pilot runs method {args.method!r}, which is not a transfer method; valid: {', '.join(method_names())}")
    if args.config is not None and not Path(args.config).is_file():
        _die(f"--config {args.config!r} does not exist")
    if args.config is None and not (root / "config.toml").is_file():
        _die(f"{args.results!r} has no config.toml (the config of its last run), which --pilot builds the pilot "
             "transfers from; give the study's config with --config CONFIG")


def _run_pilot(args) -> int:
    """Plan the pilots (every check first: config, models, inputs, the lock), run them, re-rank, report."""
    from analysis.recommend_pilot import candidates, pilot_lines, rerank
    from pipelines.lock import LockHeld
    from pipelines.pilot import missing_inputs, pilot_results, plan_pilot, run_pilot, study_config
    from zoo_study.config import ConfigError

    top_k = args.pilot_top or 3
    try:
        cfg = study_config(args.results, args.config)
        with connect(args.results) as db:
            first, finished = candidates(db, args.student, args.method, top_k)
        plan = plan_pilot(cfg, args.method, list(dict.fromkeys(first + finished)), args.pilot)
    except (ConfigError, ValueError) as err:
        _die(str(err))
    if missing := missing_inputs(plan, args.results):
        _die(f"the pilots need {len(missing)} file(s) the root lacks (first: {missing[0]}); run the study's zoo "
             "and predict stages first")
    print(f"pilot: {len(plan.jobs)} transfer(s) of {args.method}, {plan.epochs} epoch(s) over {plan.images} "
          f"images = {plan.steps} step(s) each (asked: {args.pilot}), under {Path(args.results) / 'pilot'}")
    try:
        report = run_pilot(cfg, plan)
    except LockHeld as err:
        _die(str(err))
    print(report.summary())
    with connect(args.results) as db:
        out = rerank(db, args.student, args.method, pilot_results(plan, args.results), top_k,
                     top=args.top or None, alpha=args.alpha)
    print(render_text(out.rec))
    print("\n".join(pilot_lines(out)))
    _write(out.rec, args.out)
    return 1 if report.failed else 0


def _write(rec, out: Path | None) -> None:
    """The ranking to ``--out``, atomically (temp file + rename)."""
    if out is None:
        return
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".parquet":
        write_parquet_atomic(rec.table, out)
    else:
        if out.suffix == ".csv":
            pacsv.write_csv(rec.table, tmp)
        else:
            tmp.write_text(json.dumps(as_dict(rec), indent=2, default=str), encoding="utf-8")
        tmp.replace(out)
    print(f"wrote {rec.table.num_rows} row(s) to {out}")


def cmd_recommend(args: argparse.Namespace) -> int:
    out = _check(args)
    if not ResultsLayout(args.results).is_results_root():
        _die(f"{args.results!r} is not a results root (no config.toml and no result files)")
    if args.pilot is not None:
        args.out = out
        return _run_pilot(args)
    with connect(args.results) as db:
        try:
            rec = recommend(db, args.student, args.method, top=args.top or None, alpha=args.alpha)
        except ValueError as err:
            _die(str(err))
    print(render_text(rec))
    _write(rec, out)
    return 0
