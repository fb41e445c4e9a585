"""The one training loop: steps from a start to a stop, with hooks between steps.

``Loop.run`` takes batches, calls the jitted train step and then every hook's ``after_step`` in order. Hooks
(``jaxdml.train.hooks``) do everything else: logging, evaluation, early stopping, checkpoints, signals. A hook
may replace ``loop.state`` between steps, end training (``loop.request_stop``), ask for a checkpoint, and keeps
its own counters in ``state_dict()``, which the checkpoint stores so that a resumed run continues exactly.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxdml import distributed
from jaxdml.errors import UserError
from jaxdml.train.state import TrainState


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or a gradient became NaN/inf; the message names the step."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Hook:
    """Does something between train steps. Every method is optional.

    ``name`` keys the hook's ``state_dict()`` (JSON values) in the checkpoint; a hook without a name keeps
    nothing across a restart. Arrays a hook keeps belong in ``loop.state.extra[name]`` (checkpointed with the
    state).
    """

    name: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def before_train(self, loop: Loop) -> None:
        """Once, before the first step of this process (also when resuming)."""

    def after_step(self, loop: Loop, step: int) -> None:
        """After the train step that made ``step`` steps done; ``loop.metrics`` holds its (device) metrics."""

    def after_train(self, loop: Loop) -> None:
        """Once, after the last step or when training stops for any reason (exceptions included)."""


class Loop:
    """Drives ``train_step`` over batches; ``hooks`` run after every step in order."""

    def __init__(self, state: TrainState, train_step: Callable[[TrainState, Any], tuple[TrainState, Any]],
                 hooks: Sequence[Hook], *, last_good_checkpoint: Callable[[], str] = lambda: "none"):
        self.state = state
        self.train_step = train_step
        self.hooks = list(hooks)
        self.last_good_checkpoint = last_good_checkpoint
        self.metrics: Any = None  # the last step's metrics (device arrays)
        self.host_batch: dict[str, np.ndarray] = {}  # the last step's batch as the host built it
        self.events: dict[str, Any] = {}  # what hooks did at this step, for later hooks (e.g. "eval": metrics)
        self.stop_reason: str | None = None
        self.signum: int | None = None  # a signal arrived: save and stop
        self.progress: Any = None  # a tqdm bar when one is shown (messages go through it)

    def hook_states(self) -> dict[str, dict[str, Any]]:
        return {h.name: h.state_dict() for h in self.hooks if h.name}

    def load_hook_states(self, states: dict[str, dict[str, Any]]) -> None:
        for hook in self.hooks:
            if hook.name and hook.name in states:
                hook.load_state_dict(states[hook.name])

    def request_stop(self, reason: str) -> None:
        """Ends training after the current step's hooks."""
        self.stop_reason = reason

    def echo(self, message: str) -> None:
        """Prints a line (through the progress bar when there is one); only process 0 of a multi-process run does."""
        if not distributed.is_primary():
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, flush=True)

    def check_finite(self, step: int) -> None:
        """Raises :class:`TrainingDivergedError` if the step has recorded a non-finite loss or gradient."""
        bad = int(self.state.nonfinite_step)
        if bad >= 0:
            raise TrainingDivergedError(
                f"the loss or its gradients became NaN/inf at step {bad} (detected at step {step}); the parameters "
                f"were not updated from that step on. Last good checkpoint: {self.last_good_checkpoint()}. Lower "
                f"optim.lr, set optim.grad_clip_norm, or use model.compute_dtype='float32'.")

    def run(self, batches: Iterator[tuple[Any, dict[str, np.ndarray]]], start: int, stop: int) -> TrainState:
        """Steps ``start`` .. ``stop - 1`` (batches yield ``(device batch, host batch)``); returns the state."""
        try:
            for hook in self.hooks:
                hook.before_train(self)
            for step in range(start, stop):
                if self.stop_reason is not None:
                    break
                device_batch, self.host_batch = next(batches)
                self.state, self.metrics = self.train_step(self.state, device_batch)
                self.events = {}
                for hook in self.hooks:
                    hook.after_step(self, step + 1)
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return self.state


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The host's part of a global batch as arrays split over ``sharding``."""
    return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in ("images", "labels")}


def prefetch(batches: Iterator[dict[str, np.ndarray]], sharding: NamedSharding, size: int = 2
             ) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
    """Keeps ``size`` batches in flight to the devices while the current step runs."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append((to_device(batch, sharding), batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
