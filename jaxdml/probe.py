"""A linear probe of a trained classifier's block: how well a linear classifier separates the classes in its
features (the letKD supplement's Table 4 measures the intermediate KD layer this way).

    python -m jaxdml.probe --workdir runs/rn56_rn20_table4_alpha1                  # the LeTKD layer's block
    python -m jaxdml.probe --workdir runs/rn56_rn20 --block layer2_2 --step best

Every training and test image (the evaluation transform, no augmentation) goes through the run's network; the
block's output map x and, where the run puts a layer after that block (the intermediate LeTKD layer, a
template-matching block), that layer's output x-hat are average-pooled over the locations. A linear
discriminant analysis classifier (scikit-learn's ``LinearDiscriminantAnalysis``, its default SVD solver; the
letKD release used scikit-learn) is fitted on the training images' vectors and scored on the test images': the
top-1 accuracy on x and on x-hat. With ``alpha = 0`` the layer adds nothing to x and the two are equal.

The model, data and checkpoint are the run's (as :mod:`jaxdml.evaluate`: the training data is needed, and a
student's teacher); the default block is the run's ``distill.letkd.student_block`` when it has the intermediate
LeTKD layer, else its ``distill.template.block``. The result is printed and saved to
``<workdir>/evaluations/probe_<block>_step<N>.json``; nothing else in the workdir changes. Several processes
(``python -m jaxdml.launch --module jaxdml.probe``) share the embedding; each fits the same probe.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxdml.cli import WORKDIR, run_user_errors, start_tool
from jaxdml.errors import UserError

PROBED = ("lda_x", "lda_x_hat")  # accuracy on the block's output x; on the output x-hat of the layer after it


def lda_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Top-1 accuracy on ``test_x`` of scikit-learn's LDA classifier fitted on ``(train_x, train_y)`` (float64)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variables are collinear")  # dead ReLU channels: harmless
        lda = LinearDiscriminantAnalysis().fit(np.asarray(train_x, np.float64), train_y)
        return float(np.mean(lda.predict(np.asarray(test_x, np.float64)) == test_y))


def default_block(cfg: Any) -> str:
    """The block of the run's intermediate LeTKD layer, else of its template-matching block."""
    from jaxdml.distill.terms import letkd_parts

    if letkd_parts(cfg.distill)["intermediate"]:
        return cfg.distill.letkd.student_block
    if cfg.distill.template.block:
        return cfg.distill.template.block
    raise UserError("the run has no intermediate LeTKD layer and no template-matching block, so there is no block to "
                    "probe by default; name one with --block (e.g. --block layer3_0).")


def pooled_features(trainer: Any, block: str) -> Any:
    """The jitted ``(state, images) -> (B, C) or (B, 2C)``: the locations' mean of ``block``'s output x, followed by
    that of the inserted layer's output x-hat when there is one; split over the devices like the images."""
    from jaxdml.train.state import model_variables
    from jaxdml.train.step import batch_sharding

    def pooled(state: Any, images: jax.Array) -> jax.Array:
        out = trainer.model.apply(model_variables(state.params, state.model_state), images, train=False)
        maps = [out["features"][block], *([out["inserted"][block]] if block in out["inserted"] else [])]
        return jnp.concatenate([jnp.mean(m.astype(jnp.float32), axis=(1, 2)) for m in maps], axis=-1)

    sharding = batch_sharding(trainer.mesh)
    return jax.jit(pooled, in_shardings=(trainer.state_sharding, sharding), out_shardings=sharding)


def block_layout(trainer: Any, block: str) -> tuple[int, bool]:
    """(channels of ``block``'s output, whether a layer is inserted after it); refuses an unknown block."""
    sample = jnp.zeros((1, trainer.cfg.data.image_size, trainer.cfg.data.image_size, 3), jnp.uint8)
    from jaxdml.train.state import model_variables

    out = jax.eval_shape(lambda s: trainer.model.apply(model_variables(s.params, s.model_state), sample,
                                                        train=False), trainer.setup.state)
    if block not in out["features"]:
        raise UserError(f"--block={block}: the network {trainer.cfg.model.backbone} has no block of that name; its "
                        f"blocks: {', '.join(out['features'])}.")
    return int(out["features"][block].shape[-1]), block in out["inserted"]


def embed_pooled(trainer: Any, state: Any, source: Any, predict: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features (N, C or 2C) of the valid records of ``source``, their labels), on every process."""
    from jaxdml import distributed
    from jaxdml.eval.evaluators import predict_source

    outputs = predict_source(predict, state, source, trainer.cfg, trainer.mesh)
    keep = outputs.valid
    return distributed.gather(outputs.values)[keep], outputs.labels[keep]


def probe_run(workdir: str | Path, *, step: str = "latest", block: str | None = None) -> dict[str, Any]:
    """Probes the run in ``workdir`` (see the module docstring); saves and returns ``{"step", "block",
    "metrics": {"lda_x": accuracy, "lda_x_hat": accuracy (when a layer follows the block)}, ...}``."""
    from jaxdml.evaluate import restore_run, run_config, save_evaluation

    workdir = Path(workdir)
    cfg = run_config(workdir)
    if cfg.eval.evaluator != "accuracy":
        raise UserError(f"--workdir {workdir} holds a {cfg.trainer!r} run, which trains an embedding; the probe "
                        f"measures a classifier's blocks (a distillation run: trainer 'distillation').")
    block = block or default_block(cfg)
    trainer, state, number = restore_run(workdir, step, cfg)
    try:
        channels, inserted = block_layout(trainer, block)
        predict = pooled_features(trainer, block)
        train_x, train_y = embed_pooled(trainer, state, trainer.data.train, predict)
        test_x, test_y = embed_pooled(trainer, state, trainer.data.query, predict)
    finally:
        trainer.close()
    metrics = {name: lda_accuracy(train_x[:, i * channels:(i + 1) * channels], train_y,
                                  test_x[:, i * channels:(i + 1) * channels], test_y)
               for i, name in enumerate(PROBED[:1 + inserted])}
    result = {"step": number, "block": block, "channels": channels, "probe": "LDA on the locations' mean",
              "train_images": len(train_y), "test_images": len(test_y), "metrics": metrics}
    layer = "x, x-hat" if inserted else "x"
    return save_evaluation(workdir, f"probe_{block}_step{number}", result, cfg, "test", (), None,
                           f"LDA probe of {block} ({layer}), step {number}")


def main(argv: list[str]) -> None:
    start_tool(argv)
    f = flags.FLAGS
    run_user_errors(lambda: probe_run(WORKDIR.value, step=f.step, block=f.block))


def define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("step", "latest", "Checkpoint: a step number, best (the run's best evaluation) or latest.")
    flags.DEFINE_string("block", None, "The block whose output is probed (e.g. layer3_0). Default: the block of the "
                        "run's intermediate LeTKD layer, else of its template-matching block.")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
