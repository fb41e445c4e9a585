"""LeTKD's extra cost per train step, relative to the plain student and to Hinton KD, in one run.

    python benchmarks/letkd.py                                   # RN56 -> RN20, CIFAR-100 shapes, batch 64
    python benchmarks/letkd.py --teacher resnet32x4 --student resnet8x4

Times the distillation trainer's jitted train step, built by the one training core (student forward/backward,
SGD update; the frozen teacher's forward where a method needs it) on synthetic 32x32 images after compilation,
for: the plain student (CE),
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
from jaxdml.distill.model import build_classifier
from jaxdml.distill.teacher import Teacher
from jaxdml.train.state import create_mesh
from jaxdml.train.step import batch_sharding
from jaxdml.trainers import distillation_procedure, resolve_config, setup_training


def config(args: argparse.Namespace, method: str, intermediate: bool):
    cfg = default_config()
    cfg.trainer, cfg.data.name, cfg.data.image_size = "distillation", "cifar100", 32
    cfg.model.backbone, cfg.model.compute_dtype = args.student, args.dtype
    cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov = "sgd", 0.05, True
    cfg.distill.method = method
    cfg.distill.teacher_arch = args.teacher
    cfg.distill.teacher = "(random weights: a timing needs no trained teacher)"
    cfg.distill.kd_weight = 0.9 if method == "kd" else 0.0
    cfg.distill.letkd.intermediate = intermediate
    return cfg


def step_seconds(args: argparse.Namespace, method: str, intermediate: bool = False) -> float:
    cfg, _ = resolve_config(config(args, method, intermediate))
    classes, rng = 100, np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, classes, args.batch).astype(np.int32))
    teacher, artefacts = None, {}
    if method != "none":
        t_model = build_classifier(cfg, classes, arch=args.teacher)
        teacher = Teacher(t_model, t_model.init(jax.random.key(1), images[:1]))
    if method == "letkd":
        t_maps = jax.eval_shape(lambda: teacher.model.apply(teacher.variables, images[:1]))["features"]
        final_c, mid_c = t_maps["final"].shape[-1], t_maps["layer3_0"].shape[-1]
        ld, subclasses = cfg.distill.letkd, classes * cfg.distill.letkd.subclasses
        artefacts = {"codebook": rng.normal(size=(ld.num_words, final_c)).astype(np.float32),
                     "lda_scalings": rng.normal(size=(mid_c, ld.lda_dims)).astype(np.float32),
                     "lda_mean": np.zeros((mid_c,), np.float32),
                     "centres": rng.normal(size=(subclasses, ld.lda_dims)).astype(np.float32),
                     "scores": rng.dirichlet(np.ones(subclasses), subclasses).astype(np.float32)}
    mesh = create_mesh()
    setup = setup_training(cfg, distillation_procedure(cfg, classes, teacher, artefacts), mesh)
    batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in (("images", images), ("labels", labels))}
    state = setup.state
    for _ in range(args.warmup):
        state, metrics = setup.train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = setup.train_step(state, batch)
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
