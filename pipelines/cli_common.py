"""What every ``zoo-study`` command shares: the misuse exit (code 2, one line) and loading the config."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

LOG = logging.getLogger("zoo_study")
EXIT_MISUSE = 2


def die(msg: str) -> NoReturn:
    """One line on stderr and exit code 2: bad arguments, config, results root or Ray address."""
    print(f"zoo-study: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_MISUSE)


def load(args):
    """The study config of ``args.config`` with ``args.set`` overrides, or exit 2 naming the problem."""
    from zoo_study.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set or [])
    except ConfigError as err:
        die(str(err))


def load_study(args):
    """The :class:`~pipelines.study.Study` of ``args`` (models resolved once), or exit 2."""
    from pipelines.study import Study
    from zoo_study.config import ConfigError

    cfg = load(args)
    try:
        return Study.from_config(cfg)
    except ConfigError as err:
        die(str(err))
