"""What the command-line entry points share: the ``--config`` / ``--workdir`` flags, checking ``--config.*``
overrides before absl applies them, and one-line messages for errors a user can fix.

Loss and miner hyper-parameters may be set from the command line even where the experiment file leaves them at
their defaults (absl refuses overrides of keys a config lacks): :func:`parse_flags` sets aside
``--config.loss.kwargs.<k>=v``, ``--config.loss.miner.kwargs.<k>=v`` and
``--config.loss.extra_terms.<term>.kwargs.<k>=v`` flags whose key the experiment lacks and, once absl has
applied the other overrides, sets them in the parsed config, each value parsed as the type of its default in
the signature of the loss (or miner) that the config names. Entry points read the config with
:func:`config_from_flags`.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import re
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdml import distributed
from jaxdml.config import (
    RULES,
    Number,
    check_overrides,
    has_key,
    hyper_parameter_owner,
    load_config_file,
    parse_hyper_parameter,
)
from jaxdml.errors import ConfigError, UserError

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py[:arg]).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs (resumes).")
DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", list(distributed.MODES),
                                "Join a multi-process job through jax.distributed: auto = when the environment is one "
                                "(SLURM, Open MPI, Cloud TPU), on = always (JAX detects the cluster), off = never.")
COORDINATOR_ADDRESS = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for launchers JAX "
                                          "does not detect (with --num_processes and --process_id).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.", lower_bound=1)
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's number, 0 .. num_processes - 1.",
                                  lower_bound=0)

# A hyper-parameter flag: --config.<section>.kwargs.<name>[=value], section loss | loss.miner | loss.extra_terms.<t>.
_KWARGS_FLAG = re.compile(r"--config\.(loss|loss\.miner|loss\.extra_terms\.\w+)\.kwargs\.(\w+)(?:=(.*))?", re.DOTALL)


@dataclasses.dataclass
class _Parsed:
    """What :func:`parse_flags` learnt from the command line for :func:`config_from_flags`."""

    experiment: ml_collections.ConfigDict | None = None  # the experiment file's config, without overrides
    hyper_parameters: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (section, name, text)
    given: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # every (section, name) given as a flag


_PARSED = _Parsed()


def _config_path(argv: list[str]) -> str | None:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    return path


def _set_aside_hyper_parameters(experiment: ml_collections.ConfigDict, argv: list[str]) -> list[str]:
    """``argv`` without the hyper-parameter flags whose key ``experiment`` lacks (recorded in ``_PARSED``)."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        match = _KWARGS_FLAG.fullmatch(arg)
        if match is None:
            kept.append(arg)
            continue
        section, name, text = match.groups()
        _PARSED.given.add((section, name))
        if has_key(experiment, f"{section}.kwargs.{name}") or not has_key(experiment, section):
            kept.append(arg)  # absl sets keys the experiment has; check_overrides names a missing section
            continue
        if text is None:  # --config.loss.kwargs.k v
            text = next(args, None)
            if text is None:
                raise ConfigError(f"{arg} needs a value: {arg}=VALUE.")
        _PARSED.hyper_parameters.append((section, name, text))
    return kept


def _check_override_types(experiment: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Names a ``--config.key=value`` flag whose value does not parse as the number its key holds (absl would say
    only "invalid literal for int()")."""
    for arg in argv:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        key, text = arg[len("--config."):].split("=", 1)
        if not has_key(experiment, key):
            continue
        current = _node(experiment, key)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            continue
        try:
            int(text) if isinstance(current, int) else float(text)
        except ValueError:
            try:
                value: Any = float(text)
            except ValueError:
                value = text
            kind = int if isinstance(current, int) else float
            rule = RULES[key] if key in RULES else Number(kind)
            rule.check(key, value, current)  # raises: a float for an integer, or not a number


def parse_flags(argv: list[str]) -> list[str]:
    """Checks ``--config.*`` overrides against the experiment's keys, sets aside hyper-parameter flags the
    experiment lacks (see :func:`config_from_flags`), then parses the flags; exit 2 on errors."""
    global _PARSED
    _PARSED = _Parsed()
    config_path = _config_path(argv)
    try:
        if config_path is not None:
            _PARSED.experiment = load_config_file(config_path)
            argv = _set_aside_hyper_parameters(_PARSED.experiment, argv)
            check_overrides(_PARSED.experiment, argv)
            _check_override_types(_PARSED.experiment, argv)
        # config_flags defines its override flags from sys.argv, not from the argv it is given.
        saved, sys.argv = sys.argv, argv
        try:
            rest = flags.FLAGS(argv)
        finally:
            sys.argv = saved
        if config_path is not None:
            _apply_hyper_parameters(CONFIG.value)  # unknown names and unparsable values exit here
        return rest
    except (ConfigError, flags.Error) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)


def _drop_replaced(cfg: ml_collections.ConfigDict, section: str) -> str | None:
    """If the command line changed the loss (or miner) of ``section``, the experiment's hyper-parameters were
    written for the one it replaced: they are not carried over (those given as flags are); returns a note."""
    experiment = _PARSED.experiment
    if experiment is None or not has_key(experiment, f"{section}.name"):
        return None
    node = _node(cfg, section)
    before, after = _node(experiment, section)["name"], node["name"]
    if before == after or "kwargs" not in node:
        return None
    dropped = [k for k in node["kwargs"] if (section, k) not in _PARSED.given]
    if not dropped:
        return None
    node["kwargs"] = ml_collections.ConfigDict({k: v for k, v in node["kwargs"].items() if k not in dropped})
    return (f"{section}.name={after!r} replaces the experiment's {before!r}; its {section}.kwargs "
            f"({', '.join(dropped)}) are not carried over.")


def _node(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _apply_hyper_parameters(cfg: ml_collections.ConfigDict) -> None:
    """Sets the hyper-parameter flags :func:`parse_flags` set aside in ``cfg`` (in place), after dropping the
    experiment's hyper-parameters of a loss or miner that a flag replaced."""
    values = []
    for section, name, text in _PARSED.hyper_parameters:  # all parsed before anything changes
        owner, params = hyper_parameter_owner(cfg, section)
        values.append((section, name, parse_hyper_parameter(f"{section}.kwargs.{name}", text, owner, params)))
    with cfg.unlocked():
        sections = ["loss", "loss.miner", *(f"loss.extra_terms.{t}" for t in cfg.loss.extra_terms)]
        notes = [note for section in sections if (note := _drop_replaced(cfg, section))]
        for section, name, value in values:
            node = _node(cfg, section)
            if "kwargs" not in node:
                node["kwargs"] = ml_collections.ConfigDict()
            node["kwargs"][name] = value
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def config_from_flags() -> ml_collections.ConfigDict:
    """A copy of the experiment config of the parsed flags: the file's ``get_config()`` with every ``--config.*``
    override, including loss and miner hyper-parameters that the experiment file does not set.

    :func:`parse_flags` parses each such value as the type of its default in the signature of the loss or miner
    that the (possibly overridden) ``name`` selects, and exits with a one-line message naming the valid ones for
    an unknown hyper-parameter or an unparsable value. Where a flag replaces the experiment's loss or miner
    (``--config.loss.name=...``), the experiment's hyper-parameters for the replaced one are not carried over
    (a note on stderr says so); those given as flags are. Changing the copy changes nothing else.
    """
    return copy.deepcopy(CONFIG.value)


# Operating-system errors a user fixes (space, permissions, a read-only file system): one line, not a traceback.
_USER_OS_ERRORS = {errno.ENOSPC: "no space left on the device; free some space and rerun the same command to resume",
                   errno.EDQUOT: "disk quota exceeded; free some space and rerun the same command to resume",
                   errno.EACCES: "permission denied; choose a --workdir you can write to",
                   errno.EPERM: "operation not permitted; choose a --workdir you can write to",
                   errno.EROFS: "read-only file system; choose a writable --workdir"}


def initialize_distributed() -> None:
    """Joins the multi-process job the flags or the environment describe (:mod:`jaxdml.distributed`); call it
    first. Inconsistent flags are a :class:`~jaxdml.errors.UserError`."""
    try:
        distributed.initialize(DISTRIBUTED.value, COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value)
    except ValueError as error:
        raise UserError(str(error)) from None


def run_user_errors(fn: Callable[[], Any]) -> Any:
    """Runs ``fn``; a :class:`~jaxdml.errors.UserError` (or a full disk, a permission error) is printed as one line
    and exits with status 1."""
    try:
        return fn()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.errno not in _USER_OS_ERRORS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {_USER_OS_ERRORS[error.errno]}{where}.", file=sys.stderr)
        sys.exit(1)


def start_tool(argv: list[str], *, many_hosts: bool = True) -> None:
    """The common start of the commands that use a trained run (embed, search, export, probe): no stray arguments,
    quiet absl/orbax logging (orbax notes every read-only checkpoint open) and, with ``many_hosts``,
    ``jax.distributed`` from the environment."""
    import logging

    from absl import app
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if many_hosts:
        run_user_errors(initialize_distributed)
