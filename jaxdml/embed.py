"""Embeds images with the trained model of a run: a folder (recursively), a CSV / text list of images, or one image.

    python -m jaxdml.embed --workdir runs/digit_pairs --images my_images/ --out embeddings.npz [--step best]

The model is the one of ``<workdir>/config.json`` with the weights of a checkpoint (``--step``: ``best``, the step
the run's evaluation selected; ``latest``; or a step number), restored and verified as the trainers do
(:class:`jaxdml.train.checkpoint.Checkpointer`); a finished or an interrupted run both work, and the training data
is not needed. Images go through the run's evaluation transform (shorter side ``data.resize_size``, centre crop
``data.image_size``) and are embedded in batches of ``eval.batch_size`` split over every device, as the evaluation
does (:func:`jaxdml.eval.evaluators.predict_source`). The ``.npz`` holds ``embeddings`` (N, D) float32, ``paths``,
``labels`` (class names: the first-level sub-folders of an ImageFolder tree, or a CSV's label column) when known,
and the model's identity (``workdir``, ``step``, ``embedding_norm``) that ``python -m jaxdml.search`` reads.
Errors a user can fix are one line (``error: ...``) with exit status 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml import distributed
from jaxdml.cli import run_user_errors, start_tool
from jaxdml.config import default_config
from jaxdml.data import pipeline
from jaxdml.data.folder import FileSource, list_images
from jaxdml.errors import UserError
from jaxdml.eval.evaluators import predict_source
from jaxdml.models import build_model
from jaxdml.train.checkpoint import Checkpointer, CorruptCheckpointError, leaf_paths
from jaxdml.train.hooks import EvalHook
from jaxdml.train.state import create_mesh, model_variables
from jaxdml.train.step import batch_sharding
from jaxdml.trainers.workdir import CONFIG_FILE, saved_steps

log = logging.getLogger(__name__)

EMBEDDING_TRAINERS = ("metric_learning", "ccp")  # runs whose model outputs an embedding


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs hold (``to_json`` writes tuples as lists)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key in node and isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
            if "kwargs" in key or key == "extra_terms":
                node[key] = ml_collections.ConfigDict(value)
            else:
                _merge(node[key], value)
        elif key in node:
            node[key] = value


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir``: its ``config.json`` over the current defaults, so that a run saved
    before a key existed reads with that key's default (keys the code no longer has are dropped; ``kwargs`` and
    ``extra_terms`` are taken whole). Not validated: :func:`jaxdml.trainers.resolve_config` does that."""
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file():
        if (workdir / "fold_0").is_dir():
            raise UserError(f"--workdir {workdir} holds a fold protocol; choose one of its models: --workdir "
                            f"{workdir / 'fold_0'} (or fold_1, ...).")
        what = "does not exist" if not workdir.exists() else f"has no {CONFIG_FILE}"
        raise UserError(f"--workdir {workdir} {what}, so it holds no jaxdml run; give the --workdir of a run trained "
                        f"with python -m jaxdml.main.")
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}); restore it from a copy of the run.") from None
    cfg = default_config()
    with cfg.unlocked():
        _merge(cfg, _tuples(stored))
    return cfg


def _best_step(checkpointer: Checkpointer, newest: int, workdir: Path) -> int | None:
    """The best step of the run's evaluation: recorded in its newest checkpoint (current even when a longer run
    was interrupted), else in its ``summary.json``; None before the first evaluation."""
    import orbax.checkpoint as ocp

    meta = checkpointer.manager.restore(newest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    best = dict(meta).get("hooks", {}).get(EvalHook.name, {}).get("best_step")
    summary = workdir / "summary.json"
    if best is None and summary.is_file():
        best = json.loads(summary.read_text()).get("best_step")
    return best


def resolve_step(checkpointer: Checkpointer, step: str | int, workdir: str | Path) -> int:
    """The checkpoint ``step`` (``--step``) names among the run's saved ones: ``latest``, ``best`` (the best step of
    the run's evaluation) or a saved step number. Raises :class:`UserError` listing the saved steps."""
    workdir, step = Path(workdir), str(step)
    steps = checkpointer.steps()
    if not steps:
        raise UserError(f"--workdir {workdir} has no checkpoints yet (none in {checkpointer.directory}); train the run "
                        f"until its first checkpoint (train.checkpoint_every) and try again.")
    saved = f"saved steps: {', '.join(map(str, steps))}"
    if step == "latest":
        return steps[-1]
    if step == "best":
        best = _best_step(checkpointer, steps[-1], workdir)
        if best is None:
            raise UserError(f"the run in --workdir {workdir} has not been evaluated yet, so it has no best step; use "
                            f"--step latest or a step number ({saved}).")
        if best not in steps:
            raise UserError(f"the run's best step {best} is no longer among the saved checkpoints ({saved}); use "
                            f"--step latest or one of those.")
        return int(best)
    if not step.isdigit():
        raise UserError(f"--step={step}: give a step number, best or latest ({saved}).")
    if int(step) not in steps:
        raise UserError(f"--step={step}: no checkpoint of step {step} in {checkpointer.directory}; use best, latest "
                        f"or one of the {saved}.")
    return int(step)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A run's model with the weights of one checkpoint, replicated over ``mesh``, ready for inference."""

    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict[str, Any]
    step: int
    workdir: Path
    mesh: Mesh

    @property
    def identity(self) -> str:
        """``<absolute workdir>:<step>``: two embeddings are comparable only when this agrees."""
        return f"{self.workdir.absolute()}:{self.step}"

    def predict_fn(self) -> Any:
        """The jitted ``(variables, images) -> embeddings``, batches split over the mesh (as the evaluation's)."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        sharding = batch_sharding(self.mesh)
        return jax.jit(lambda variables, images: self.model.apply(variables, images, train=False)["embedding"],
                       in_shardings=(jax.tree.map(lambda _: replicated, self.variables), sharding),
                       out_shardings=sharding)


def load_trained(workdir: str | Path, step: str | int = "best") -> TrainedModel:
    """The model of the run in ``workdir`` with the weights of checkpoint ``step`` (``best``, ``latest`` or a
    number), checked against the model its config builds, for inference in Python: ``trained.model.apply(
    trained.variables, images, train=False)["embedding"]`` maps uint8 (B, H, W, 3) images (``config.data
    .image_size``) to embeddings; ``variables`` (parameters and BatchNorm statistics, without the loss's parameters
    such as proxies) are replicated over the devices. Reads only the checkpoint and ``config.json`` (no training
    data), so only embedding runs (``EMBEDDING_TRAINERS``) load; a classifier's head depends on its dataset
    (evaluate it with ``python -m jaxdml.evaluate``). Raises :class:`UserError` naming the fix."""
    workdir = Path(workdir)
    cfg = load_run_config(workdir)
    if cfg.trainer not in EMBEDDING_TRAINERS:
        raise UserError(f"--workdir {workdir} holds a {cfg.trainer!r} run, which trains a classifier; embeddings come "
                        f"from runs of trainer {' or '.join(EMBEDDING_TRAINERS)}.")
    if not saved_steps(workdir):
        raise UserError(f"--workdir {workdir} has no checkpoints yet; train the run until its first checkpoint "
                        f"(train.checkpoint_every) and embed again.")
    model = build_model(cfg.model)
    mesh = create_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    sample = jax.ShapeDtypeStruct((1, cfg.data.image_size, cfg.data.image_size, 3), np.uint8)
    expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=1, selection_metric="map_at_r", read_only=True)
    try:
        number = resolve_step(checkpointer, step, workdir)
        stored = checkpointer.manager.item_metadata(number)["state"]
        stored = getattr(stored, "tree", stored)
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated), stored)
        try:
            state, _ = checkpointer.restore(number, abstract)
        except CorruptCheckpointError as error:
            raise UserError(f"checkpoint step {number} in {checkpointer.directory} is damaged ({error}); use another "
                            f"--step (saved: {', '.join(map(str, checkpointer.steps()))}).") from None
    finally:
        checkpointer.close()
    variables = model_variables(dict(state["params"]), dict(state["model_state"]))
    _check_fits(variables, expected, workdir, number)
    return TrainedModel(cfg, model, variables, number, workdir, mesh)


def _check_fits(variables: Any, expected: Any, workdir: Path, step: int) -> None:
    have = {p: (tuple(x.shape), np.dtype(x.dtype)) for p, x in zip(leaf_paths(variables), jax.tree.leaves(variables))}
    want = {p: (tuple(x.shape), np.dtype(x.dtype)) for p, x in zip(leaf_paths(expected), jax.tree.leaves(expected))}
    problems = [f"{p} is missing" for p in want if p not in have]
    problems += [f"{p} is not in the model" for p in have if p not in want]
    problems += [f"{p} is {have[p][1].name}{list(have[p][0])}, the model has {w[1].name}{list(w[0])}"
                 for p, w in want.items() if p in have and have[p] != w]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"checkpoint step {step} in --workdir {workdir} does not fit the model its {CONFIG_FILE} "
                        f"describes: {'; '.join(problems[:3])}{more}; the config or the code changed since the run "
                        f"was trained (restore its {CONFIG_FILE}, or embed with the jaxdml version that trained it).")


def embed_source(trained: TrainedModel, source: Any, *, skip_corrupt: bool = False, batch_size: int | None = None,
                 num_workers: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D) float32 of every record of ``source``, valid (N,) bool: False where a corrupt image was
    skipped), with the run's evaluation transform, batched and split over the devices as the evaluation does."""
    cfg = copy.deepcopy(trained.config)
    cfg.data.skip_corrupt = skip_corrupt
    cfg.data.num_workers = num_workers
    if batch_size is not None:
        cfg.eval.batch_size = batch_size
    devices = trained.mesh.devices.size
    batches = len(pipeline.EvalBatches(source=source, device_batch=-(-cfg.eval.batch_size // devices),
                                       image_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                                       devices=devices))
    jitted = trained.predict_fn()
    from tqdm import tqdm

    bar = tqdm(total=batches, unit="batch", desc=f"embedding {len(source)} images", dynamic_ncols=True,
               disable=not (progress and distributed.is_primary()))

    def predict(variables: Any, images: jax.Array) -> jax.Array:
        out = jitted(variables, images)
        bar.update(1)
        return out

    try:
        outputs = predict_source(predict, trained.variables, source, cfg, trained.mesh)
    finally:
        bar.close()
    values = distributed.gather(outputs.values)[:len(source)].astype(np.float32)
    return values, np.asarray(outputs.valid[:len(source)], bool)


def embed_images(trained: TrainedModel, images: str | Path, *, skip_corrupt: bool = False,
                 batch_size: int | None = None, num_workers: int = 0, progress: bool = False,
                 key: str = "--images") -> dict[str, np.ndarray]:
    """The index of the images ``images`` names (a folder, a CSV / text list, one image): the arrays
    :func:`save_index` writes. Undecodable images raise (naming the file) unless ``skip_corrupt``, which leaves them
    out with a warning."""
    listing = list_images(images, key=key, skip_corrupt=skip_corrupt, skip_hint="--skip_corrupt")
    source = FileSource("embed", listing.paths, listing.classes, skip_hint="--skip_corrupt")
    embeddings, valid = embed_source(trained, source, skip_corrupt=skip_corrupt, batch_size=batch_size,
                                     num_workers=num_workers, progress=progress)
    if not valid.all():
        skipped = [str(p) for p in source.paths[~valid]]
        log.warning("left out %d images that cannot be decoded: %s", len(skipped), ", ".join(skipped[:5]))
        if not valid.any():
            raise UserError(f"{key}={str(images)!r}: none of its {len(source)} images can be decoded.")
    index = {"embeddings": embeddings[valid], "paths": source.paths[valid]}
    if listing.classes is not None:
        index["labels"] = np.asarray(source.class_names, dtype=str)[source.labels[valid]]
    return {**index, **model_identity(trained)}


def model_identity(trained: TrainedModel) -> dict[str, np.ndarray]:
    """What an index records of the model that made it (search embeds queries with it and refuses other models)."""
    return {"workdir": np.asarray(str(trained.workdir.absolute())), "step": np.asarray(trained.step, np.int64),
            "model": np.asarray(trained.identity), "embedding_norm": np.asarray(trained.config.model.embedding_norm)}


def check_output(out: str | Path) -> Path:
    """``--out`` as a path that can be written (checked before any work)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out={str(out)!r} must end in .npz (the index is a NumPy .npz file).")
    if out.is_dir():
        raise UserError(f"--out={str(out)!r} is a folder; give a file name ending in .npz.")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out={str(out)!r}: no permission to write in {parent}; choose another --out.")
    return out


def save_index(out: str | Path, index: dict[str, np.ndarray]) -> None:
    """Writes ``index`` to ``out`` (atomically: a temporary file renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **index)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def run(workdir: str, images: str, out: str, step: str = "best", *, skip_corrupt: bool = False,
        batch_size: int | None = None, num_workers: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """``python -m jaxdml.embed`` without the flags: checks, embeds, writes ``out``; returns the index."""
    out_path = check_output(out)
    trained = load_trained(workdir, step)
    index = embed_images(trained, images, skip_corrupt=skip_corrupt, batch_size=batch_size, num_workers=num_workers,
                         progress=progress)
    if distributed.is_primary():
        save_index(out_path, index)
        labels = f", labels of {len(set(index['labels'].tolist()))} classes" if "labels" in index else ""
        print(f"embedded {len(index['paths'])} images with step {trained.step} of {workdir} "
              f"({index['embeddings'].shape[1]}-d{labels}) -> {out_path}", file=sys.stderr)
    return index


def main(argv: list[str]) -> None:
    start_tool(argv)
    f = flags.FLAGS
    run_user_errors(lambda: run(f.workdir, f.images, f.out, f.step, skip_corrupt=f.skip_corrupt,
                                batch_size=f.batch_size, num_workers=f.num_workers, progress=f.progress_bar))


def define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("images", None, "A folder of images (searched recursively; labels from the first-level "
                        "sub-folders when every image lies in one), a CSV of path[,label] rows, a text file "
                        "with one path a line, or one image.")
    flags.DEFINE_string("out", None, "The .npz file to write (embeddings, paths, labels, the model's identity).")
    flags.DEFINE_string("step", "best", "Checkpoint: best (selected by the run's evaluation), latest, or a step "
                        "number.")
    flags.DEFINE_integer("batch_size", None, "Images per batch over all devices (default: the run's "
                         "eval.batch_size).", lower_bound=1)
    flags.DEFINE_integer("num_workers", 0, "Processes decoding images (0: the main process).", lower_bound=0)
    flags.DEFINE_bool("skip_corrupt", False, "Leave out images that cannot be decoded, with a warning, instead "
                      "of stopping (non-image files in a folder are always left out, with a warning).")
    flags.DEFINE_bool("progress_bar", True, "Show a progress bar.")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir", "images", "out"])
    app.run(main)
