"""Command-line entry point: trains and evaluates one experiment in one workdir.

    python -m jaxdml.main --config experiments/digit_pairs.py --workdir runs/digit_pairs
    python -m jaxdml.main --config experiments/digit_pairs.py --workdir runs/digit_pairs --config.train.batch_size=64

``--workdir`` holds everything the run writes; rerunning the same command resumes from its newest checkpoint.
``config.trainer`` picks the procedure (``jaxdml.trainers.TRAINERS``). Errors a user can fix (unknown config keys
or values, a dataset that is not prepared, a diverged loss, a corrupt image, unusable weights) are printed as one
message without a traceback; the exit status is 1 for those, 2 for bad flags, and 128 + signal number after
SIGINT/SIGTERM (the checkpoint is saved first).
"""

from __future__ import annotations

import sys

from absl import app, logging

from jaxdml.cli import CONFIG, WORKDIR, parse_flags, run_user_errors


def main(argv: list[str]) -> None:
    del argv
    from jaxdml.train.loop import Interrupted
    from jaxdml.trainers import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    try:
        run_user_errors(lambda: train_and_evaluate(CONFIG.value, WORKDIR.value))
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    from absl import flags

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
