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


def cmd_recommend(args: argparse.Namespace) -> int:
    out = _check(args)
    if not ResultsLayout(args.results).is_results_root():
        _die(f"{args.results!r} is not a results root (no config.toml and no result files)")
    with connect(args.results) as db:
        try:
            rec = recommend(db, args.student, args.method, top=args.top or None, alpha=args.alpha)
        except ValueError as err:
            _die(str(err))
    print(render_text(rec))
    if out is not None:
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
    return 0
