"""Checkpoints with orbax: train state + JSON metadata (data position, hook states, checksums), keep-last-N + best.

Guarantees, each tested in ``tests/test_runs.py``:

* **Atomic steps.** Saves are asynchronous; orbax writes each step to a temporary directory and renames it when
  complete, and removes leftover temporaries on start. :meth:`Checkpointer.close` waits for pending saves.
* **Verified contents.** Every saved step carries a CRC-32 of each array's bytes (in its metadata). A restore
  recomputes them and also checks that the state is finite; a step that cannot be read, fails a checksum or holds
  NaN/inf is moved aside to ``<step>.unreadable`` / ``<step>.corrupt`` with a warning naming it, and the next
  older step is used.
* **A step that does not fit is not corruption.** Before reading arrays the stored shapes and dtypes are compared
  with the run's; a mismatch (the code or the data changed since the save) raises
  :class:`CheckpointMismatchError` and leaves every checkpoint in place.
* **Disk space.** Before each save the free space is compared with the size of the newest checkpoint (or of the
  state, for the first); too little raises :class:`DiskFullError` before anything is written, and a save that
  runs out of space anyway raises it too (the earlier steps stay intact).
"""

from __future__ import annotations

import errno
import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxdml import distributed
from jaxdml.errors import UserError

log = logging.getLogger(__name__)

# Headroom over the newest checkpoint's size: metadata, and a state that grew a little.
_SPACE_MARGIN = 1.1
_SPACE_SLACK = 1 << 20


class DiskFullError(UserError):
    """Not enough free space for the next checkpoint; the earlier ones are intact."""

    errno = errno.ENOSPC


class CheckpointMismatchError(UserError):
    """A checkpoint's arrays do not have the shapes and dtypes of the run that reads it."""


class CorruptCheckpointError(Exception):
    """A step's arrays fail their checksums or are not finite (internal: the step is set aside)."""


def leaf_paths(tree: Any) -> list[str]:
    """``params/backbone/conv1/kernel``-style names of the leaves of ``tree``, in leaf order."""
    return ["/".join(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def checksums(state: Any) -> dict[str, str]:
    """CRC-32 (hex) of each array's bytes, keyed by its path. A replicated array is read from this process's copy
    (so every process of a multi-process run computes the same values); an array split over processes is
    skipped."""
    out = {}
    for name, leaf in zip(leaf_paths(state), jax.tree.leaves(state)):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                continue
            leaf = leaf.addressable_data(0)
        data = np.ascontiguousarray(jax.device_get(leaf))
        out[name] = f"{zlib.crc32(data.reshape(-1).view(np.uint8)):08x}"
    return out


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _brief(error: BaseException, limit: int = 240) -> str:
    """The first line of an error's message, cut to ``limit`` characters (tensorstore's carry whole specs)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.split(" [tensorstore_spec")[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, selection_metric: str, read_only: bool = False):
        """``read_only``: restore only (another run's checkpoints, e.g. a fork's parent); nothing is created,
        cleaned up or moved aside."""
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.selection_metric = selection_metric
        preserve = policies.AnyPreservationPolicy([
            policies.LatestN(n=max(1, keep)),
            policies.BestN(get_metric_fn=lambda m: m[selection_metric], reverse=False, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=preserve, cleanup_tmp_directories=not read_only,
                                               enable_async_checkpointing=True, read_only=read_only,
                                               create=not read_only)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._pending: tuple[int, int] | None = None  # (step, bytes needed) of the save in flight

    def _disk_full(self, step: int | None, needed: int, error: BaseException | None = None) -> DiskFullError:
        saved = [s for s in self.steps() if s != step]
        intact = f"checkpoints up to step {saved[-1]} are intact" if saved else "no checkpoint was saved"
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        need = f"about {needed / 2**20:.0f} MiB needed, " if needed else ""
        return DiskFullError(f"not enough disk space in {self.directory} for {what}: {need}"
                             f"{shutil.disk_usage(self.directory).free / 2**20:.0f} MiB free; {intact}. Free some "
                             f"space (or lower train.keep_checkpoints) and rerun the same command to resume.")

    def needed_space(self, state: Any) -> int:
        """Bytes to reserve for one more step: the newest step's size, or the state's when there is none."""
        saved = self.steps()
        size = _size(self.directory / str(saved[-1])) if saved else 0
        if not size:
            size = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
        return int(size * _SPACE_MARGIN) + _SPACE_SLACK

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Starts an asynchronous save of ``state`` and ``meta`` (``metrics`` rank it for keep-best) after checking
        the free space; raises :class:`DiskFullError` (nothing written) when it does not fit."""
        if step in self.manager.all_steps():
            return
        self.wait()  # a failed earlier save surfaces here, before a new one starts
        needed = self.needed_space(state)
        try:
            if shutil.disk_usage(self.directory).free < needed:
                raise self._disk_full(step, needed)
            meta = {**meta, "checksums": checksums(state)}
            args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            metrics = {self.selection_metric: float(metrics[self.selection_metric])} if metrics else None
            self._pending = (step, needed)
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except DiskFullError:
            raise
        except Exception as error:
            if _is_disk_full(error):
                raise self._disk_full(step, needed, error) from None
            raise

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest step that reads, verifies and is finite, or None if there is none.

        Raises :class:`CheckpointMismatchError` (moving nothing) when the newest step does not fit
        ``abstract_state``."""
        for step in reversed(self.steps()):
            self.check_fits(step, abstract_state)
            try:
                return self.restore(step, abstract_state)
            except CorruptCheckpointError as error:
                self._set_aside(step, "corrupt", f"is damaged ({error})")
            except Exception as error:
                self._set_aside(step, "unreadable", f"is incomplete or corrupt ({type(error).__name__}: "
                                                    f"{_brief(error)})")
        return None

    def _set_aside(self, step: int, suffix: str, why: str) -> None:
        """Moves a damaged step out of the way (process 0 does it while the others wait: they all found it
        damaged, since they read the same files)."""
        if self.read_only:
            raise UserError(f"checkpoint step {step} in {self.directory} {why}.")
        aside = self.directory / f"{step}.{suffix}"
        if distributed.is_primary():
            log.warning("checkpoint step %d in %s %s; moved it to %s and trying an older one", step,
                        self.directory, why, aside)
            (self.directory / str(step)).rename(aside)
        distributed.barrier(f"jaxdml: checkpoint {step} set aside")
        self.manager.reload()

    def check_fits(self, step: int, abstract_state: Any, *,
                   fix: str = "the code or the data changed since it was saved; train in a new --workdir (the "
                              "checkpoints were left as they are)") -> None:
        """Raises :class:`CheckpointMismatchError` (ending with ``fix``) if step ``step``'s arrays differ in
        structure, shape or dtype from ``abstract_state`` (unreadable metadata is left to the restore, which sets
        the step aside)."""
        try:
            stored = self.manager.item_metadata(step)["state"]
            stored = getattr(stored, "tree", stored)
            if stored is None:
                return
            stored_leaves = dict(zip(leaf_paths(stored), jax.tree.leaves(stored)))
        except Exception:
            return
        expected = dict(zip(leaf_paths(abstract_state), jax.tree.leaves(abstract_state)))
        problems = [f"{name} is missing" for name in expected if name not in stored_leaves]
        problems += [f"{name} is not in this run" for name in stored_leaves if name not in expected]
        for name, want in expected.items():
            have = stored_leaves.get(name)
            if have is None or not hasattr(have, "shape"):
                continue
            if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
                problems.append(f"{name} is {np.dtype(have.dtype).name}{list(have.shape)}, this run has "
                                f"{np.dtype(want.dtype).name}{list(want.shape)}")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit this run's state: "
                f"{'; '.join(problems[:3])}{more}; {fix}.")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of ``step``, verified: raises :class:`CorruptCheckpointError` if an array fails its
        checksum or the state is not finite."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], dict(restored["meta"])
        expected = meta.get("checksums")
        if expected is not None:  # steps saved before checksums existed verify only finiteness
            actual = checksums(state)
            bad = [name for name, value in actual.items() if name in expected and expected[name] != value]
            if bad:
                raise CorruptCheckpointError(f"checksum mismatch in {', '.join(bad[:3])}"
                                             + (f" and {len(bad) - 3} more arrays" if len(bad) > 3 else ""))
        nonfinite = [name for name, leaf in zip(leaf_paths(state), jax.tree.leaves(state))
                     if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.isfinite(leaf).all())]
        if nonfinite:
            raise CorruptCheckpointError(f"NaN/inf in {', '.join(nonfinite[:3])}")
        if int(getattr(state, "nonfinite_step", -1)) >= 0:
            raise CorruptCheckpointError("it records a diverged step")
        return state, meta

    def wait(self) -> None:
        """Waits for the save in flight; raises :class:`DiskFullError` if it ran out of space."""
        pending, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            if _is_disk_full(error):
                step, needed = pending or (None, 0)
                raise self._disk_full(step, needed, error) from None
            raise

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``state``: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
