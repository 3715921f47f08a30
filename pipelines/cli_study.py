"""``zoo-study status`` and ``zoo-study prune``: what a study's plan says about a results root.

Both plan the whole :class:`~pipelines.study.Study` (every job stage) and read only the root: status counts
its jobs by each stage's done rule (:func:`pipelines.stages.count`), prune lists (and with ``--apply``
moves aside) the result files no given config plans.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.cli_common import LOG, die, load_study
from pipelines.study import Study
from zoo_study.config import ConfigError

__all__ = ["cmd_prune", "cmd_status"]


def cmd_status(args) -> int:
    """Jobs per stage of a study. CONFIG may also be a results root: its ``config.toml`` (the resolved config
    of its last run) is read then."""
    from pipelines.records import status
    from zoo_study.store import ResultsLayout

    if args.config and Path(args.config).expanduser().is_dir():
        layout = ResultsLayout(Path(args.config).expanduser())
        if not layout.config_file.is_file():
            die(f"{args.config!r} is a folder but not a results root (no config.toml); give the study's TOML "
                 "or the results root it writes to, e.g. runs/demo")
        args.config = str(layout.config_file)
    study = load_study(args)
    cfg = study.cfg
    try:
        plans = study.plans()
    except ConfigError as err:
        die(str(err))
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
    from zoo_study.config import load_config
    from zoo_study.store import ResultsLayout

    names = args.configs or [None]
    jobs, roots = [], []
    for name in names:
        shown = name or "the embedded demo"
        try:
            cfg = load_config(name, args.set or [])
            plans = Study.from_config(cfg).plans()
        except ConfigError as err:
            die(f"{shown}: {err}")
        if unplanned := [s for s, p in plans.items() if p is None]:
            command = " ".join(["zoo-study run", *([name] if name else []), "--stage zoo,predict,score"])
            die(f"{shown}: stage(s) {', '.join(unplanned)} are planned from the scores, which "
                 f"{cfg.results_root()} does not have yet, so which of its results are current is unknown; "
                 f"run `{command}` first")
        roots.append((shown, cfg.results_root()))
        jobs += [j for stage_jobs in plans.values() for j in stage_jobs]
    try:
        root = common_root(roots)
    except ValueError as err:
        die(str(err))
    if not ResultsLayout(root).is_results_root():
        die(f"{root} holds no study results (no config.toml and no result table files); nothing to prune")
    lock = ResultsLock(root)
    try:
        lock.acquire()  # also for listing: a running study's half-planned files are not stale
    except LockHeld as err:
        die(str(err))
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
