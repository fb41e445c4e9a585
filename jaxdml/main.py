"""Command-line entry point: trains and evaluates one experiment in one workdir.

    python -m jaxdml.main --config experiments/digit_pairs.py --workdir runs/digit_pairs
    python -m jaxdml.main --config experiments/digit_pairs.py --workdir runs/digit_pairs --config.train.batch_size=64

``--workdir`` holds everything the run writes; rerunning the same command resumes from its newest checkpoint. A
rerun with another config (apart from logging and worker settings) is refused before it touches anything;
``--extend_steps`` trains the same run on to a larger ``train.num_steps`` and ``--fork_from=<workdir>[:<step>]``
starts a new run (in a new ``--workdir``) from another run's checkpoint with this config.

``config.trainer`` picks the procedure (``jaxdml.trainers.TRAINERS``). Errors a user can fix (config keys or
values, a run's identity, a dataset that is not prepared, a diverged loss, a corrupt image, unusable weights, the
workdir, a full disk) are printed as one line without a traceback; the exit status is 1 for those, 2 for bad flags,
and 128 + signal number after SIGINT/SIGTERM (the checkpoint is saved first).

On many hosts every host runs the same command (see "Many hosts" in README.md): ``jax.distributed`` starts from
the environment of a SLURM, Open MPI or Cloud TPU job, or from ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (``python -m jaxdml.launch`` sets them for several processes on one machine).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from jaxdml.cli import WORKDIR, config_from_flags, initialize_distributed, parse_flags, run_user_errors

EXTEND_STEPS = flags.DEFINE_bool("extend_steps", False, "Allow a larger train.num_steps than the run in --workdir "
                                 "was started with: the same run, trained on.")
FORK_FROM = flags.DEFINE_string("fork_from", None, "<workdir>[:<step>]: start a new run in --workdir from that "
                                "run's checkpoint (default: its newest) with this config.")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    run_user_errors(initialize_distributed)  # before anything touches a device
    from jaxdml.train.loop import Interrupted
    from jaxdml.trainers import Resume, train_and_evaluate

    resume = Resume(extend_steps=EXTEND_STEPS.value, fork_from=FORK_FROM.value)
    try:
        run_user_errors(lambda: train_and_evaluate(config_from_flags(), WORKDIR.value, resume=resume))
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
