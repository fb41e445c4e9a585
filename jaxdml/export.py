"""Exports the embedding function of a run with its weights: a self-contained artefact that runs without jaxdml.

    python -m jaxdml.export --workdir runs/digit_pairs --out runs/digit_pairs_export [--step best|latest|N]
        [--batch dynamic|N] [--platforms cpu,cuda,tpu] [--saved_model]

``--out`` (a new or empty folder) receives

* ``embed.stablehlo``: ``jax.export`` of ``embed(params, images) -> embeddings``, serialised StableHLO lowered for
  every platform of ``--platforms``. ``images`` is ``(B, H, W, 3)`` uint8 RGB, ``B`` symbolic (any batch size) unless
  ``--batch N``; the model's input normalisation is inside, and ``embeddings`` is ``(B, D)`` float32 (unit length
  when the run's ``model.embedding_norm`` is ``l2``).
* ``params.npz``: the weights of the checkpoint, one array per leaf keyed ``params/backbone/.../kernel``; they are the
  exported function's first argument (a dict of exactly these keys), so they stay inspectable and the StableHLO small.
* ``metadata.json``: image size, embedding dimension and normalisation, the exact preprocessing a caller must do,
  the run and step, the versions that exported it.
* ``saved_model/`` (with ``--saved_model``, needs TensorFlow): a TF SavedModel for TF Serving, made with
  ``jax2tf``; its ``serving_default`` signature maps ``images`` (uint8) to ``embeddings``.

:func:`load_exported` reads the folder with jax and numpy only (its docstring has a standalone version to copy).
Before anything is written the export is deserialised and run on this machine's platform and compared with the
model. Errors a user can fix are one line (``error: ...``) with exit status 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax import export

if TYPE_CHECKING:
    from jaxdml.embed import TrainedModel

EMBED_FILE = "embed.stablehlo"
PARAMS_FILE = "params.npz"
METADATA_FILE = "metadata.json"
SAVED_MODEL_DIR = "saved_model"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
CHECK_TOLERANCE = 1e-4  # largest difference allowed between the export and the model on the check batch


def load_exported(directory: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """``embed(images) -> embeddings`` of an export folder: ``images`` (B, H, W, 3) uint8 RGB, preprocessed as
    its ``metadata.json`` says; ``embeddings`` (B, D) float32 numpy. Uses only jax and numpy (``jax.export`` needs
    the ``flatbuffers`` package), never jaxdml or flax. Without jaxdml installed, the same in a few lines::

        import jax
        import numpy as np
        from jax import export
        directory = "runs/digit_pairs_export"
        with open(f"{directory}/embed.stablehlo", "rb") as f:
            exported = export.deserialize(bytearray(f.read()))
        with np.load(f"{directory}/params.npz") as f:
            params = jax.device_put({key: f[key] for key in f.files})
        call = jax.jit(exported.call)
        embed = lambda images: np.asarray(call(params, np.asarray(images, np.uint8)))

    A wrong shape or dtype raises ``ValueError`` naming the expected input.
    """
    directory = Path(directory)
    exported = export.deserialize(bytearray((directory / EMBED_FILE).read_bytes()))
    with np.load(directory / PARAMS_FILE, allow_pickle=False) as f:
        params = jax.device_put({key: f[key] for key in f.files})
    call = jax.jit(exported.call)
    want = exported.in_avals[-1].shape
    batch = None if export.is_symbolic_dim(want[0]) else int(want[0])
    size = tuple(int(d) for d in want[1:])

    def embed(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != size or (
                batch is not None and images.shape[0] != batch):
            expected = f"({'B' if batch is None else batch}, {', '.join(map(str, size))}) uint8"
            raise ValueError(f"expected {expected} images (see {directory / METADATA_FILE} for the preprocessing), "
                             f"got {images.dtype}{list(images.shape)}")
        return np.asarray(call(params, images))

    return embed


# The exporting side (jaxdml and flax are imported inside, so that load_exported needs only jax and numpy).


def check_out_dir(out: str | os.PathLike) -> Path:
    """``--out`` as a folder that can be created or is empty (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise _user_error(f"--out={str(out)!r} is a file; give a new folder for the export.")
    if out.is_dir() and any(out.iterdir()):
        raise _user_error(f"--out={str(out)!r} exists and is not empty; give a new folder (e.g. --out={out}_2) "
                          f"or remove this one.")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _user_error(f"--out={str(out)!r}: no permission to write in {parent}; choose another --out.")
    return out


def parse_batch(batch: str | int | None) -> int | None:
    """``--batch``: ``dynamic`` (None: any batch size) or a positive number."""
    if batch is None or str(batch) == "dynamic":
        return None
    if not str(batch).isdigit() or int(batch) < 1:
        raise _user_error(f"--batch={batch}: use dynamic (any batch size) or a positive number of images.")
    return int(batch)


def parse_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(p.strip().lower() for p in platforms if p.strip()))
    unknown = [p for p in chosen if p not in PLATFORMS]
    if unknown or not chosen:
        raise _user_error(f"--platforms={','.join(platforms)}: choose among {', '.join(PLATFORMS)} (comma-separated).")
    return chosen


def tensorflow_available() -> bool:
    """Whether TensorFlow is installed (``--saved_model`` needs it)."""
    return importlib.util.find_spec("tensorflow") is not None


def require_tensorflow() -> None:
    """Refuses ``--saved_model`` when TensorFlow does not import."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise _user_error("--saved_model needs TensorFlow, which is not installed: pip install tensorflow "
                          "(or leave out --saved_model for the jax.export artefact alone).") from None


def _user_error(message: str) -> Exception:
    from jaxdml.errors import UserError

    return UserError(message)


def flat_params(variables: Any) -> dict[str, np.ndarray]:
    """The leaves of ``variables`` as numpy arrays keyed by their ``/``-joined path."""
    from jaxdml.train.checkpoint import leaf_paths

    leaves = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(variables))]
    return dict(zip(leaf_paths(variables), leaves))


def embed_function(trained: TrainedModel) -> Callable[[dict[str, Any], Any], Any]:
    """``(flat params, uint8 images) -> float32 embeddings``: the model of ``trained`` (a
    :class:`jaxdml.embed.TrainedModel`) in evaluation mode, its variables rebuilt from the flat dict."""
    import jax.numpy as jnp

    from jaxdml.train.checkpoint import leaf_paths

    keys = leaf_paths(trained.variables)
    treedef = jax.tree.structure(trained.variables)

    def embed(params: dict[str, Any], images: Any) -> Any:
        variables = jax.tree.unflatten(treedef, [params[k] for k in keys])
        return trained.model.apply(variables, images, train=False)["embedding"].astype(jnp.float32)

    return embed


def export_embedding(trained: TrainedModel, *, batch: int | None = None,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> tuple[export.Exported, dict[str, np.ndarray]]:
    """(the ``jax.export`` of :func:`embed_function`, the flat params it takes) for images of the run's
    ``data.image_size``, the batch symbolic when ``batch`` is None."""
    size = trained.config.data.image_size
    params = flat_params(trained.variables)
    shape = export.symbolic_shape(f"b, {size}, {size}, 3") if batch is None else (batch, size, size, 3)
    specs = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()},
             jax.ShapeDtypeStruct(shape, np.uint8))
    try:
        exported = export.export(jax.jit(embed_function(trained)), platforms=tuple(platforms))(*specs)
    except Exception as error:  # shape polymorphism or a platform's lowering: name the way out
        first = " ".join(str(error).split())[:300]
        hint = "fix the batch size with --batch N" if batch is None else "export for fewer --platforms"
        raise _user_error(f"jax.export could not export the model of step {trained.step} for {','.join(platforms)} "
                          f"({type(error).__name__}: {first}); {hint}, or export only for --platforms=cpu.") from None
    return exported, params


def check_export(exported: export.Exported, params: dict[str, np.ndarray], trained: TrainedModel,
                 batch: int | None) -> float | None:
    """Largest difference between the deserialised export and the model on a fixed random batch, on this
    machine's platform (None when the export does not include it). Raises if it exceeds ``CHECK_TOLERANCE``."""
    if export.default_export_platform() not in exported.platforms:
        return None
    size = trained.config.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch or 3, size, size, 3), dtype=np.uint8)
    reloaded = export.deserialize(exported.serialize())
    got = np.asarray(reloaded.call(params, images))
    want = np.asarray(jax.jit(embed_function(trained))(params, images))
    difference = float(np.abs(got - want).max())
    if not difference <= CHECK_TOLERANCE:
        raise RuntimeError(f"the export differs from the model by {difference:.2e} on a check batch")
    return difference


def metadata(trained: TrainedModel, exported: export.Exported, batch: int | None,
             difference: float | None) -> dict[str, Any]:
    """What ``metadata.json`` records: how to call the export and where it came from."""
    import jaxdml

    cfg, model = trained.config, trained.model
    size = cfg.data.image_size
    return {
        "format": "jaxdml export 1",
        "files": {"function": EMBED_FILE, "params": PARAMS_FILE},
        "input": {"shape": ["B" if batch is None else batch, size, size, 3], "dtype": "uint8", "range": [0, 255],
                  "channels": "RGB", "layout": "NHWC", "batch": "any" if batch is None else batch},
        "preprocessing": (f"decode to RGB uint8 (EXIF orientation applied; grayscale, palette, alpha converted to "
                          f"RGB); resize the shorter side to {cfg.data.resize_size} pixels keeping the aspect ratio "
                          f"(PIL bilinear; the longer side int({cfg.data.resize_size} * longer / shorter)); crop the "
                          f"central {size}x{size} pixels (top = round((height - {size}) / 2), left likewise); stack "
                          f"as uint8 (B, {size}, {size}, 3). No scaling or normalisation: the function does that "
                          f"(jaxdml.data.transforms.eval_transform is this preprocessing)."),
        "image_size": size,
        "resize_size": cfg.data.resize_size,
        "normalization_inside": {"formula": "(images / 255 * input_range [BGR if bgr] - mean) / std",
                                 "mean": list(model.mean), "std": list(model.std),
                                 "input_range": model.input_range, "bgr": model.bgr},
        "output": {"shape": ["B", cfg.model.embedding_dim], "dtype": "float32"},
        "embedding_dim": cfg.model.embedding_dim,
        "embedding_norm": cfg.model.embedding_norm,
        "model": {"backbone": cfg.model.backbone, "pooling": cfg.model.pooling,
                  "compute_dtype": cfg.model.compute_dtype, "trainer": cfg.trainer},
        "run": {"workdir": str(trained.workdir.absolute()), "step": trained.step, "identity": trained.identity},
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "jaxdml": jaxdml.__version__},
        "check": {"platform": export.default_export_platform(), "max_abs_difference": difference},
    }


def write_saved_model(trained: TrainedModel, params: dict[str, np.ndarray], batch: int | None,
                      platforms: Sequence[str], path: Path) -> None:
    """A TF SavedModel of the embedding function (``jax2tf``, polymorphic batch unless ``batch``): signature
    ``serving_default``, input ``images`` uint8 (B, H, W, 3), output ``embeddings`` float32 (B, D)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    size = trained.config.data.image_size
    keys = sorted(params)
    converted = jax2tf.convert(embed_function(trained), with_gradient=False,
                               polymorphic_shapes=[None, None if batch else f"(b, {size}, {size}, 3)"],
                               native_serialization_platforms=tuple(platforms))
    module = tf.Module()
    module.embed_weights = [tf.Variable(params[k], trainable=False, name=k.replace("/", ".")) for k in keys]

    @tf.function(autograph=False, input_signature=[tf.TensorSpec((batch, size, size, 3), tf.uint8, name="images")])
    def serve(images: Any) -> dict[str, Any]:
        return {"embeddings": converted(dict(zip(keys, module.embed_weights)), images)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def _publish(tmp: Path, out: Path) -> None:
    """Moves the finished ``tmp`` folder to ``out`` (absent or empty)."""
    if out.is_dir():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(out)


def run(workdir: str, out: str, step: str = "best", *, batch: str | int | None = "dynamic",
        platforms: Sequence[str] = DEFAULT_PLATFORMS, saved_model: bool = False) -> dict[str, Any]:
    """``python -m jaxdml.export`` without the flags: checks, exports, writes ``out``; returns the metadata."""
    out_path = check_out_dir(out)
    fixed = parse_batch(batch)
    chosen = parse_platforms(platforms)
    if importlib.util.find_spec("flatbuffers") is None:
        raise _user_error("jax.export serialises with the flatbuffers package, which is not installed: pip install "
                          "flatbuffers.")
    if saved_model:
        require_tensorflow()
    from jaxdml.embed import load_trained

    trained = load_trained(workdir, step)
    exported, params = export_embedding(trained, batch=fixed, platforms=chosen)
    difference = check_export(exported, params, trained, fixed)
    info = metadata(trained, exported, fixed, difference)
    tmp = out_path.absolute().parent / f".{out_path.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True)
    try:
        (tmp / EMBED_FILE).write_bytes(exported.serialize())
        np.savez(tmp / PARAMS_FILE, **params)
        if saved_model:
            write_saved_model(trained, params, fixed, chosen, tmp / SAVED_MODEL_DIR)
            info["files"]["saved_model"] = SAVED_MODEL_DIR
        (tmp / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _publish(tmp, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kb = sum(f.stat().st_size for f in out_path.rglob("*") if f.is_file()) / 1024
    print(f"exported step {trained.step} of {workdir} ({info['embedding_dim']}-d, {info['image_size']}x"
          f"{info['image_size']} uint8 images, batch {info['input']['batch']}, {','.join(chosen)}) -> {out_path} "
          f"({kb:.0f} KiB); load with jaxdml.export.load_exported", file=sys.stderr)
    return info


def main(argv: list[str]) -> None:
    from absl import flags

    from jaxdml.cli import run_user_errors, start_tool

    start_tool(argv, many_hosts=False)
    f = flags.FLAGS
    run_user_errors(lambda: run(f.workdir, f.out, f.step, batch=f.batch, platforms=f.platforms,
                                saved_model=f.saved_model))


def define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing this module defines none)."""
    from absl import flags

    from jaxdml import cli  # noqa: F401  (defines --workdir)

    flags.DEFINE_string("out", None, "A new (or empty) folder for the export.")
    flags.DEFINE_string("step", "best", "Checkpoint: best (selected by the run's evaluation), latest, or a step "
                        "number.")
    flags.DEFINE_string("batch", "dynamic", "dynamic (any batch size) or a fixed number of images per call.")
    flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS), f"Platforms to lower for ({', '.join(PLATFORMS)}).")
    flags.DEFINE_bool("saved_model", False, "Also write a TF SavedModel (jax2tf) to <out>/saved_model; needs "
                      "TensorFlow.")


if __name__ == "__main__":
    from absl import app, flags

    define_flags()
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
