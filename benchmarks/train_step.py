"""Metric-learning train step and input pipeline throughput, jaxdml vs torchvision, in one run.

    python benchmarks/train_step.py                      # on a GPU: batch 128, 224x224, bfloat16
    python benchmarks/train_step.py --batch 16 --steps 3 # on a CPU

1. jaxdml's full jitted train step (forward, contrastive loss, backward, Adam update, donated state) on
   synthetic images after compilation, with GAP, GSP and GSP + ZSR heads (GSP starts with its prototypes
   ready, so every timed step solves the transport problem).
2. The same step in PyTorch where torch and torchvision are installed: torchvision's ResNet-50 trunk, GAP,
   a 2048 -> 512 linear layer, L2 normalisation, pytorch-metric-learning's ContrastiveLoss and Adam;
   channels-last and bfloat16 autocast on a GPU (``--torch-compile`` adds ``torch.compile``).
3. The input pipeline alone: M-per-class batches with random-resized crops and flips from the decode-once
   image cache (``jaxdml.data.cache``), built by ``--workers`` grain processes, as training runs it.

Prints images/s for each and the ratios (ours / torchvision; pipeline / train step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from jaxdml.config import default_config
from jaxdml.data import cache, pipeline
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import ArraySource
from jaxdml.train.state import create_mesh
from jaxdml.train.step import batch_sharding
from jaxdml.trainers import metric_learning_procedure, resolve_config, setup_training


def _timed(step, warmup: int, steps: int) -> float:
    """Median seconds of ``step()`` (which must block until its work is done) after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jaxdml_step_seconds(pooling: str, zsr: float, args: argparse.Namespace) -> float:
    cfg = default_config()
    cfg.model.backbone, cfg.model.embedding_dim, cfg.model.pooling = args.backbone, 512, pooling
    cfg.model.compute_dtype = args.dtype
    cfg.model.gsp.memory_size = 0  # prototypes ready from the first step
    cfg.model.gsp.num_prototypes = args.prototypes
    cfg.loss.zsr.weight = zsr
    cfg.data.image_size, cfg.train.batch_size = args.image_size, args.batch
    classes = args.batch // 4
    cfg, _ = resolve_config(cfg)
    mesh = create_mesh()
    setup = setup_training(cfg, metric_learning_procedure(cfg, classes), mesh)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.image_size, args.image_size, 3), np.uint8)
    batch = {"images": jax.device_put(images, batch_sharding(mesh)),
             "labels": jax.device_put(np.repeat(np.arange(classes), 4).astype(np.int32), batch_sharding(mesh))}
    state = setup.state

    def step() -> None:
        nonlocal state
        state, metrics = setup.train_step(state, batch)
        jax.block_until_ready(metrics)

    return _timed(step, args.warmup, args.steps)


def torchvision_step_seconds(args: argparse.Namespace) -> float | None:
    """The PyTorch user's equivalent step, or None where torch/torchvision/PML are not importable."""
    try:
        import torch
        import torchvision
        from pytorch_metric_learning.losses import ContrastiveLoss
    except Exception as error:  # a torchvision build that does not match torch raises RuntimeError
        print(f"torchvision step skipped: {type(error).__name__}: {error}")
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = args.dtype == "bfloat16"
    trunk = getattr(torchvision.models, args.backbone)(weights=None)
    trunk.fc = torch.nn.Identity()
    model = torch.nn.Sequential(trunk, torch.nn.Linear(2048 if args.backbone in ("resnet50", "resnet101") else 512,
                                                       512)).to(device).to(memory_format=torch.channels_last)
    if args.torch_compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = ContrastiveLoss()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=generator).to(device)
    labels = torch.arange(args.batch // 4, device=device).repeat_interleave(4)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def step() -> None:
        x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            embeddings = torch.nn.functional.normalize(model(x).float(), dim=1)
            loss = loss_fn(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    return _timed(step, args.warmup, args.steps)


def pipeline_images_per_second(args: argparse.Namespace) -> float:
    """Train batches per second x batch size, from a cache of synthetic 256 x 340 images, after one batch."""
    rng = np.random.default_rng(0)
    num_classes, per_class = max(args.batch // 4, 64), 8
    images = rng.integers(0, 256, (num_classes * per_class, 256, 340, 3), dtype=np.uint8)
    source = ArraySource("synthetic", images, np.repeat(np.arange(num_classes), per_class).astype(np.int32))
    with tempfile.TemporaryDirectory() as directory:
        cached = cache.cached(source, 256, directory)
        del images, source
        sampler = MPerClassSampler(cached.labels, args.batch // 4, 4, seed=0)
        make = pipeline.TrainBatches(source=cached, sampler=sampler, seed=0, image_size=args.image_size,
                                     crop_area=(0.16, 1.0), crop_aspect=(3 / 4, 4 / 3), flip=True)
        batches = pipeline.iterate(make, 0, args.pipeline_batches + 1 + 2 * args.workers, args.workers)
        for _ in range(1 + args.workers):  # worker start-up
            next(batches)
        start = time.perf_counter()
        for _ in range(args.pipeline_batches):
            next(batches)
        return args.pipeline_batches * args.batch / (time.perf_counter() - start)


def main() -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=128 if gpu else 16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    parser.add_argument("--prototypes", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1)
    parser.add_argument("--steps", type=int, default=20 if gpu else 3)
    parser.add_argument("--heads", default="GAP,GSP,GSP + ZSR", help="comma-separated subset of the three")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True, help="torchvision step")
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="input pipeline processes")
    parser.add_argument("--pipeline-batches", type=int, default=40 if gpu else 8, help="0: skip the pipeline")
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind} x {jax.device_count()}), "
          f"{args.backbone}, batch {args.batch}, {args.image_size}x{args.image_size}, {args.dtype}, "
          f"median of {args.steps} steps", flush=True)
    heads = {"GAP": ("gap", 0.0), "GSP": ("gsp", 0.0), "GSP + ZSR": ("gsp", 0.1)}
    results: dict[str, float] = {}
    for name in [h.strip() for h in args.heads.split(",")]:
        seconds = jaxdml_step_seconds(*heads[name], args)
        results[name] = seconds
        first = next(iter(results.values()))
        print(f"jaxdml {name:>9}: {1e3 * seconds:9.1f} ms/step  {args.batch / seconds:9.1f} images/s  "
              f"step time / {next(iter(results))}'s: {seconds / first:.3f}", flush=True)
    reference = torchvision_step_seconds(args) if args.torch else None
    if reference is not None:
        print(f"torchvision GAP : {1e3 * reference:9.1f} ms/step  {args.batch / reference:9.1f} images/s"
              f"{' (torch.compile)' if args.torch_compile else ''}", flush=True)
        for name, seconds in results.items():
            print(f"  jaxdml {name} images/s / torchvision's: {reference / seconds:.2f}x")
    if args.pipeline_batches:
        rate = pipeline_images_per_second(args)
        fastest = args.batch / min(results.values()) if results else float("nan")
        print(f"input pipeline ({args.workers} workers, cached images): {rate:9.1f} images/s = "
              f"{rate / fastest:.2f}x the fastest jaxdml train step", flush=True)


if __name__ == "__main__":
    main()
