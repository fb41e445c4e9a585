"""Command-line entry point.

    python -m jaxdml.main --config experiments/digits.py --workdir runs/digits
    python -m jaxdml.main --config experiments/digits.py --workdir runs/digits --config.train.batch_size=64

``--workdir`` holds everything the run writes; rerunning the same command resumes from its newest
checkpoint. Errors a user can fix (unknown config keys, a dataset that is not prepared, a diverged loss, a
corrupt image) are printed as one message without a traceback; the exit status is 1 for those, 2 for bad
flags, and 128 + signal number after SIGINT/SIGTERM (the checkpoint is saved first).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdml.config import ConfigError, check_overrides, load_config_file

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs (resumes).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
    """Checks ``--config.*`` overrides against the experiment's keys before absl applies them."""
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


def main(argv: list[str]) -> None:
    del argv
    from jaxdml.data.sources import CorruptRecordError, DatasetNotPreparedError
    from jaxdml.models.convert import ConversionError
    from jaxdml.train.loop import Interrupted, TrainingDivergedError, train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(128 + stop.signum)
    except (ConfigError, DatasetNotPreparedError, TrainingDivergedError, CorruptRecordError,
            ConversionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
