"""Metrics to the workdir: one JSON object per line (``metrics.jsonl``) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricWriter:
    """Appends ``{"step", "split", "time", **metrics}`` lines; mirrors scalars to TensorBoard.

    One record per (step, split): a resumed run starts with ``resume_step`` (the restored checkpoint's step; None
    for a fresh start), which drops the records of steps the interrupted process did after that checkpoint (they
    are redone), and writing a (step, split) that is already there replaces the old record.
    """

    def __init__(self, workdir: str | Path, tensorboard: bool = True, *, resume_step: int | None = None):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if resume_step is None else [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        if self.path.exists():
            self._rewrite(kept)
        self._keys = {(r["step"], r["split"]) for r in kept}
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        row = (record["step"], split)
        if row in self._keys:  # e.g. the final evaluation of a finished run, rerun
            self._file.close()
            self._rewrite([r for r in read_metrics(self.path.parent) if (r["step"], r["split"]) != row])
            self._file = self.path.open("a")
        self._keys.add(row)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                value = _plain(value)
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 image to TensorBoard under ``tag`` (nothing without TensorBoard)."""
        if self._tb is not None:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")
            self._tb.flush()

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replaces the file's contents atomically (a crash leaves the old or the new file, never half)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(self.path)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of a workdir's ``metrics.jsonl`` (a line cut short by a killed process is skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class NullWriter(MetricWriter):
    """The writer of every process but the first in a multi-process run: the metrics are the same everywhere and
    process 0 writes them."""

    def __init__(self) -> None:  # opens no files
        pass

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        del step, split, metrics

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        del step, tag, image

    def close(self) -> None:
        pass
