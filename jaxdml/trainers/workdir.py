"""A run's identity in its workdir: which config a run's checkpoints and metrics belong to, and what a rerun may
change.

``config.json`` is the config that defines the run's results. A rerun in the same workdir resumes only with the
same config, apart from :data:`RESUME_SAFE_KEYS` (how often to log, how many workers, ...); any other difference
stops the rerun before it touches anything and names the differing keys. Two explicit ways on:

* ``extend_steps``: the same run, trained on to a larger ``train.num_steps``;
* ``fork_from="<workdir>[:<step>]"``: a *new* run in a new workdir that starts from another run's checkpoint with
  this config (e.g. a lower learning rate after a divergence), recording its parent.

``config.json`` is written only when training really starts (after every check, the data and the restore); a
changed one is kept as ``config.<n>.json``; ``run.json`` lists every start, resume, extension and fork.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from jaxdml.config import default_config
from jaxdml.errors import ConfigError, UserError

# Keys a resumed run may change: they do not change what the run computes.
RESUME_SAFE_KEYS = frozenset({
    "train.log_every", "train.progress_bar", "train.checkpoint_every", "train.keep_checkpoints",
    "data.num_workers", "data.data_dir", "data.cache_dir", "eval.batch_size", "eval.pictures", "eval.picture_k",
})
CONFIG_FILE, RUN_FILE = "config.json", "run.json"
_SHOWN = 6  # differing keys named in a refusal


@dataclasses.dataclass(frozen=True)
class Resume:
    """How this invocation may relate to the run already in its workdir (the CLI's ``--extend_steps`` and
    ``--fork_from``)."""

    extend_steps: bool = False
    fork_from: str | None = None  # "<workdir>[:<step>]": a new run from that checkpoint


def flat_config(cfg: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> JSON value (tuples as lists), the form in which configs are stored and compared."""
    tree = json.loads(cfg.to_json_best_effort()) if isinstance(cfg, ml_collections.ConfigDict) else cfg
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value and key not in ("kwargs",):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(tree, "")
    return out


def config_changes(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (stored value, current value) for every key whose value differs (a key only one side has counts,
    with ``None`` for the missing side)."""
    return {k: (stored.get(k), current.get(k)) for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)}


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def parse_fork(source: str) -> tuple[Path, int | None]:
    """``"<workdir>[:<step>]"`` -> (workdir, step or None for the newest)."""
    head, sep, tail = source.rpartition(":")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    return Path(source), None


def saved_steps(workdir: Path) -> list[int]:
    """The checkpoint steps in ``workdir`` (complete or not), read from the directory names only."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def check_writable(workdir: Path) -> None:
    """Raises :class:`UserError` when ``workdir`` cannot be created or written (checked before any work)."""
    existing = workdir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--workdir {workdir}: {existing} is a file, not a directory; choose another --workdir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir}: no permission to write in {existing}; choose a directory you can "
                        f"write to.")


class RunRecord:
    """The identity files of the run in ``workdir``: checks a rerun against them and writes them on start."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)

    def stored_config(self) -> dict[str, Any] | None:
        path = self.workdir / CONFIG_FILE
        if not path.exists():
            return None
        try:
            return flat_config(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"{path} cannot be read ({error}); it records which config the run in --workdir "
                            f"{self.workdir} used. Restore it, or train in a new --workdir.") from None

    def check(self, cfg: ml_collections.ConfigDict, resume: Resume) -> dict[str, tuple[Any, Any]]:
        """Raises :class:`ConfigError` (before any file is touched) when ``cfg`` may not continue the run in the
        workdir; returns the changes that are allowed (safe keys, an extension), empty for a fresh run."""
        steps = saved_steps(self.workdir)
        stored = self.stored_config()
        if resume.fork_from is not None:
            if steps:
                raise ConfigError(f"--fork_from starts a new run, but --workdir {self.workdir} already holds one "
                                  f"(checkpoints up to step {steps[-1]}); choose a new --workdir.")
            return {}
        if stored is None:
            if steps:
                raise ConfigError(f"--workdir {self.workdir} has checkpoints but no {CONFIG_FILE}, so the config they "
                                  f"belong to is unknown; train in a new --workdir.")
            return {}
        if not steps:  # started before but saved nothing: a fresh start, the old config is kept
            return {}
        current = flat_config(cfg)
        defaults = flat_config(default_config())
        # A key the stored config lacks was added to the schema later; at its default it changes nothing.
        changes = {k: v for k, v in config_changes(stored, current).items()
                   if k in stored or v[1] != defaults.get(k, v[1])}
        identity = {k: v for k, v in changes.items() if k not in RESUME_SAFE_KEYS}
        steps_change = identity.pop("train.num_steps", None)
        extended = False
        if steps_change is not None:
            old, new = steps_change
            if new < steps[-1]:
                raise ConfigError(
                    f"train.num_steps={new} is below the run's newest checkpoint (step {steps[-1]}) in --workdir "
                    f"{self.workdir}; a run is never shortened. For the state at an earlier step start a new run "
                    f"from it: --fork_from={self.workdir}:<step> --workdir=<new> (saved steps: "
                    f"{', '.join(map(str, steps))}).")
            if not (resume.extend_steps and new > old):
                identity["train.num_steps"] = steps_change
            else:
                extended = True
        if identity:
            shown = ", ".join(f"{k}={_show(new)} (the run has {_show(old)})"
                              for k, (old, new) in list(identity.items())[:_SHOWN])
            more = f" and {len(identity) - _SHOWN} more" if len(identity) > _SHOWN else ""
            extend = ""
            if list(identity) == ["train.num_steps"] and steps_change[1] > steps_change[0]:
                extend = " add --extend_steps to train this run on to the new length, or"
            raise ConfigError(
                f"--workdir {self.workdir} holds a run with another config: {shown}{more}; resuming would mix the "
                f"two, so nothing was changed. To go on,{extend} train in a new --workdir, or start a new run from "
                f"this one's checkpoint with --fork_from={self.workdir} --workdir=<new>.")
        allowed = {k: v for k, v in changes.items() if k in RESUME_SAFE_KEYS}
        if extended:
            allowed["train.num_steps"] = steps_change
        return allowed

    def start(self, cfg: ml_collections.ConfigDict, step: int, event: str, **details: Any) -> None:
        """Writes ``config.json`` (keeping a different older one as ``config.<n>.json``) and appends this start to
        ``run.json``; called once everything is checked and loaded, right before training."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / CONFIG_FILE
        text = cfg.to_json_best_effort(indent=2) + "\n"
        if path.exists() and path.read_text() != text:
            n = 1
            while (self.workdir / f"config.{n}.json").exists():
                n += 1
            path.rename(self.workdir / f"config.{n}.json")
        _write_atomic(path, text)
        run_path = self.workdir / RUN_FILE
        record = json.loads(run_path.read_text()) if run_path.exists() else {"history": []}
        record["history"].append({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "event": event, "step": step, "argv": sys.argv, **details})
        _write_atomic(run_path, json.dumps(record, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
