"""Checkpoints with orbax: train state + JSON metadata (data position, best metric), keep-last-N + best.

Saves are asynchronous; :meth:`Checkpointer.close` waits for them. Orbax writes each step to a temporary
directory and renames it when complete, and removes leftover temporaries on start. Restoring walks back
from the newest step; a step that still cannot be read (e.g. half-written on a filesystem without atomic
renames) is moved aside to ``<step>.unreadable`` with a warning naming it, and the next older one is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, selection_metric: str):
        self.directory = Path(directory).absolute()
        self.selection_metric = selection_metric
        preserve = policies.AnyPreservationPolicy([
            policies.LatestN(n=max(1, keep)),
            policies.BestN(get_metric_fn=lambda m: m[selection_metric], reverse=False, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=preserve, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Starts an asynchronous save of ``state`` and ``meta`` (``metrics`` rank it for keep-best)."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = {self.selection_metric: float(metrics[self.selection_metric])} if metrics else None
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest readable step, or None if there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state)
            except Exception as error:
                aside = self.directory / f"{step}.unreadable"
                log.warning("checkpoint step %d in %s is incomplete or corrupt (%s: %s); moved it to %s and "
                            "trying an older one", step, self.directory, type(error).__name__, error, aside)
                (self.directory / str(step)).rename(aside)
                self.manager.reload()
        return None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``state``: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
