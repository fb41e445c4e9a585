"""What the command-line entry points share: the ``--config`` / ``--workdir`` flags, checking ``--config.*``
overrides before absl applies them, and one-line messages for errors a user can fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags

from jaxdml.config import check_overrides, load_config_file
from jaxdml.errors import ConfigError, UserError

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py[:arg]).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs (resumes).")


def parse_flags(argv: list[str]) -> list[str]:
    """Checks ``--config.*`` overrides against the experiment's keys, then parses the flags (exit 2 on errors)."""
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_path is None and "--config" in argv[:-1]:
        config_path = argv[argv.index("--config") + 1]
    try:
        if config_path is not None:
            check_overrides(load_config_file(config_path), argv)
        return flags.FLAGS(argv)
    except (ConfigError, flags.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run_user_errors(fn: Callable[[], Any]) -> Any:
    """Runs ``fn``; a :class:`~jaxdml.errors.UserError` is printed as one line and exits with status 1."""
    try:
        return fn()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
