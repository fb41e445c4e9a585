"""LeTKD's extra cost per train step, relative to the plain student and to Hinton KD, in one run.

    python benchmarks/letkd.py                                   # RN56 -> RN20, CIFAR-100 shapes, batch 64
    python benchmarks/letkd.py --teacher resnet32x4 --student resnet8x4

Times the full jitted classification step (student forward/backward, SGD update; the frozen teacher's
forward where a method needs it) on synthetic 32x32 images after compilation, for: the plain student (CE),
Hinton KD, letKD-1 (penultimate layer, K = 4,096 words) and letKD-2 (+ the intermediate layer, 800
sub-classes). Artefacts are random arrays of the real shapes: their values do not change the cost. The paper
reports about 2% extra time for the intermediate layer and 2-20% for the penultimate one (K = 64 ... 4,096).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.config import default_config
from jaxdml.distill.model import build_classifier, student_inserts
from jaxdml.distill.setup import Teacher, make_classification_step
from jaxdml.train.optim import make_optimizer
from jaxdml.train.step import TrainState


def config(args: argparse.Namespace, method: str, intermediate: bool):
    cfg = default_config()
    cfg.task, cfg.data.name, cfg.data.image_size = "classification", "cifar100", 32
    cfg.model.backbone, cfg.model.compute_dtype = args.student, args.dtype
    cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov = "sgd", 0.05, True
    cfg.distill.method = method
    cfg.distill.teacher_arch = args.teacher
    cfg.distill.kd_weight = 0.9 if method == "kd" else 0.0
    cfg.distill.letkd.intermediate = intermediate
    return cfg


def step_seconds(args: argparse.Namespace, method: str, intermediate: bool = False) -> float:
    cfg = config(args, method, intermediate)
    classes, rng = 100, np.random.default_rng(0)
    model = build_classifier(cfg, classes, inserts=student_inserts(cfg, classes))
    images = jnp.asarray(rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, classes, args.batch).astype(np.int32))
    teacher = None
    frozen: dict = {"teacher": None, "artefacts": {}}
    if method != "none":
        t_model = build_classifier(cfg, classes, arch=args.teacher)
        teacher = Teacher(t_model, t_model.init(jax.random.key(1), images[:1]))
        frozen["teacher"] = teacher.variables
    if method == "letkd":
        t_maps = jax.eval_shape(lambda: teacher.model.apply(teacher.variables, images[:1]))["features"]
        final_c, mid_c = t_maps["final"].shape[-1], t_maps["layer3_0"].shape[-1]
        ld = cfg.distill.letkd
        frozen["artefacts"] = {"codebook": jnp.asarray(rng.normal(size=(ld.num_words, final_c)), jnp.float32),
                               "lda_scalings": jnp.asarray(rng.normal(size=(mid_c, ld.lda_dims)), jnp.float32),
                               "lda_mean": jnp.zeros((mid_c,), jnp.float32),
                               "centres": jnp.asarray(rng.normal(size=(classes * ld.subclasses, ld.lda_dims)),
                                                      jnp.float32),
                               "scores": jnp.asarray(rng.dirichlet(np.ones(classes * ld.subclasses),
                                                                   classes * ld.subclasses), jnp.float32)}
    variables = dict(model.init(jax.random.key(0), images[:1]))
    params = variables.pop("params")
    tx = make_optimizer(cfg.optim, 1000, params, variables.get("batch_stats", {}), False)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables, loss_state={},
                       opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))
    step = jax.jit(make_classification_step(cfg, model, teacher, tx), donate_argnums=(0,))
    batch = {"images": images, "labels": labels}
    for _ in range(args.warmup):
        state, metrics = step(state, batch, frozen)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch, frozen)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50 if gpu else 10)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), {args.teacher} -> {args.student}, "
          f"batch {args.batch}, 32x32, {args.dtype}, median of {args.steps} steps", flush=True)
    results = {}
    for name, method, intermediate in (("student (CE)", "none", False), ("Hinton KD", "kd", False),
                                       ("letKD-1", "letkd", False), ("letKD-2", "letkd", True)):
        results[name] = seconds = step_seconds(args, method, intermediate)
        plain, hinton = results["student (CE)"], results.get("Hinton KD", seconds)
        print(f"{name:>13}: {1e3 * seconds:8.2f} ms/step  vs plain student {seconds / plain:6.3f}x  "
              f"vs Hinton KD {seconds / hinton:6.3f}x", flush=True)
    extra = results["letKD-2"] / results["letKD-1"] - 1
    print(f"intermediate LeTKD layer alone: +{100 * extra:.1f}% per step over letKD-1")


if __name__ == "__main__":
    main()
