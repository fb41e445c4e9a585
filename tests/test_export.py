"""python -m jaxdml.export on a tiny trained run: the artefact reloads without jaxdml (the loader docstring's
standalone snippet and load_exported, in a fresh process where jaxdml's model code and flax cannot be imported) and
gives the embeddings of python -m jaxdml.embed; the refusals are one line."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_folder_data import write_digits
from train_helpers import REPO, tiny_config, worker_env

from jaxdml import embed, export
from jaxdml.data.folder import decode_image_file
from jaxdml.data.transforms import eval_transform
from jaxdml.errors import UserError
from jaxdml.trainers import train_and_evaluate

STEPS = {"train.num_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}

# Run in a fresh interpreter: blocks imports of jaxdml (but for jaxdml.export in the second part), flax and the
# training stack, runs the docstring snippet and load_exported on batches of 3 and 5, saves what they return.
LOADER = r'''
import importlib.abc, sys
import numpy as np
ALLOWED = set()
BLOCKED = ("jaxdml", "flax", "orbax", "optax", "ml_collections", "tensorflow")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED and name not in ALLOWED:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
images = np.load(sys.argv[1])
namespace = {}
exec(SNIPPET, namespace)
out = {"snippet3": namespace["embed"](images[:3]), "snippet5": namespace["embed"](images)}
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], sorted(sys.modules)
ALLOWED.update({"jaxdml", "jaxdml.export"})
from jaxdml.export import load_exported
fn = load_exported(sys.argv[2])
out.update(loader3=fn(images[:3]), loader5=fn(images))
try:
    fn(images.astype(np.float32))
except ValueError as error:
    out["message"] = np.asarray(str(error))
assert sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED) == ["jaxdml", "jaxdml.export"], sorted(sys.modules)
np.savez(sys.argv[3], **out)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, export folder, five preprocessed images, their embeddings by jaxdml.embed) of a 4-step run."""
    root = tmp_path_factory.mktemp("export")
    cfg = tiny_config(**STEPS)
    train_and_evaluate(cfg, root / "run")
    paths = write_digits(root / "img", classes=range(5), per_class=1)
    (root / "list.txt").write_text("".join(f"{p}\n" for p in paths))
    index = embed.run(str(root / "run"), str(root / "list.txt"), str(root / "index.npz"), "latest")
    assert list(index["paths"]) == [str(p) for p in paths]
    images = np.stack([eval_transform(decode_image_file(p), resize_size=cfg.data.resize_size,
                                      size=cfg.data.image_size) for p in paths])
    export.run(str(root / "run"), str(root / "out"), "latest")
    return root / "run", root / "out", images, index["embeddings"]


def snippet() -> str:
    """The standalone code block of load_exported's docstring."""
    doc = export.load_exported.__doc__
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(block)


def test_the_export_reloads_without_jaxdml_and_matches_jaxdml_embed(run, tmp_path):
    workdir, out, images, expected = run
    assert sorted(p.name for p in out.iterdir()) == ["embed.stablehlo", "metadata.json", "params.npz"]
    code = snippet().replace('"runs/digit_pairs_export"', repr(str(out)))
    assert code != snippet() and len(code.splitlines()) <= 10
    np.save(tmp_path / "images.npy", images)
    script = f"SNIPPET = {code!r}\n{LOADER}"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "images.npy"), str(out),
                             str(tmp_path / "got.npz")], capture_output=True, text=True, cwd=tmp_path,
                            env=worker_env())
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "got.npz") as got:
        for name, n in [("snippet3", 3), ("snippet5", 5), ("loader3", 3), ("loader5", 5)]:
            assert got[name].shape == (n, 16) and got[name].dtype == np.float32, name
            np.testing.assert_allclose(got[name], expected[:n], atol=1e-5, rtol=0, err_msg=name)
        assert "expected (B, 16, 16, 3) uint8 images" in str(got["message"])
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["image_size"] == 16 and meta["embedding_dim"] == 16 and meta["embedding_norm"] == "l2"
    assert meta["run"]["step"] == 4 and meta["run"]["workdir"] == str(workdir.absolute())
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["batch"] == "any"
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["check"]["max_abs_difference"] <= 1e-5
    assert "resize the shorter side to 16 pixels" in meta["preprocessing"]
    with np.load(out / "params.npz") as params:
        assert any(k.startswith("params/backbone/") for k in params.files)


def test_cli_exports_a_fixed_batch(run, tmp_path):
    workdir, _, images, expected = run
    out = tmp_path / "fixed"
    result = subprocess.run([sys.executable, "-m", "jaxdml.export", f"--workdir={workdir}", f"--out={out}",
                             "--step=2", "--batch=3", "--platforms=cpu"], capture_output=True, text=True,
                            cwd=REPO, env=worker_env())
    assert result.returncode == 0, result.stderr
    assert "exported step 2 of" in result.stderr and "batch 3, cpu" in result.stderr
    fn = export.load_exported(out)
    assert fn(images[:3]).shape == (3, 16)
    with pytest.raises(ValueError, match=r"expected \(3, 16, 16, 3\) uint8"):
        fn(images)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["run"]["step"] == 2 and meta["platforms"] == ["cpu"] and meta["input"]["batch"] == 3
    assert not np.allclose(fn(images[:3]), expected[:3], atol=1e-5)  # step 2, not the latest


def test_refusals_name_the_fix(run, tmp_path):
    workdir, out, _, _ = run
    with pytest.raises(UserError, match="holds no jaxdml run"):
        export.run(str(tmp_path / "nothing"), str(tmp_path / "new"))
    with pytest.raises(UserError, match=r"exists and is not empty; give a new folder \(e.g. --out="):
        export.run(str(tmp_path / "nothing"), str(out))  # checked before the workdir
    with pytest.raises(UserError, match=r"--step=7: no checkpoint of step 7 .*saved steps: 2, 4\."):
        export.run(str(workdir), str(tmp_path / "new"), "7")
    with pytest.raises(UserError, match="--batch=0: use dynamic"):
        export.run(str(workdir), str(tmp_path / "new"), batch="0")
    with pytest.raises(UserError, match="--platforms=cpu,gpu: choose among cpu, cuda, rocm, tpu"):
        export.run(str(workdir), str(tmp_path / "new"), platforms=["cpu", "gpu"])
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(export.tensorflow_available(), reason="TensorFlow is installed: --saved_model works")
def test_saved_model_without_tensorflow_is_refused_in_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdml.export", f"--workdir={tmp_path / 'no_run'}",
                             f"--out={tmp_path / 'out'}", "--saved_model"], capture_output=True, text=True,
                            cwd=REPO, env=worker_env())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --saved_model needs TensorFlow"), result.stderr
    assert "pip install tensorflow" in lines[0] and not (tmp_path / "out").exists()


SERVE = r"""
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
images = np.load(sys.argv[2])
out = {f"batch{n}": serve(images=tf.constant(images[:n]))["embeddings"].numpy() for n in (2, 5)}
out["inputs"] = np.asarray(sorted(serve.structured_input_signature[1]))
np.savez(sys.argv[3], **out)
"""


@pytest.mark.skipif(not export.tensorflow_available(), reason="needs TensorFlow (pip install tensorflow-cpu); CI "
                    "checks the refusal without it")
def test_saved_model_serves_the_embeddings_of_jaxdml_embed(run, tmp_path):
    """--saved_model in a fresh TensorFlow process (no jaxdml): the serving signature maps uint8 images of any
    batch to the embeddings python -m jaxdml.embed gives."""
    workdir, _, images, expected = run
    out = tmp_path / "tf"
    result = subprocess.run([sys.executable, "-m", "jaxdml.export", f"--workdir={workdir}", f"--out={out}",
                             "--step=latest", "--platforms=cpu", "--saved_model"], capture_output=True, text=True,
                            cwd=REPO, env=worker_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "saved_model" / "saved_model.pb").is_file()
    np.save(tmp_path / "images.npy", images)
    served = subprocess.run([sys.executable, "-c", SERVE, str(out / "saved_model"), str(tmp_path / "images.npy"),
                             str(tmp_path / "served.npz")], capture_output=True, text=True, env=worker_env())
    assert served.returncode == 0, served.stderr[-3000:]
    with np.load(tmp_path / "served.npz") as got:
        assert list(got["inputs"]) == ["images"]
        np.testing.assert_allclose(got["batch5"], expected, atol=2e-6, rtol=0)
        np.testing.assert_allclose(got["batch2"], expected[:2], atol=2e-6, rtol=0)


def test_the_gsp_transport_exports_with_a_symbolic_batch():
    """GSP's parameter checks accept a scalar against a symbolic batch (a GSP run exports with a dynamic batch)."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from jaxdml.kernels import gsp_transport

    solve = jax.jit(lambda cost: gsp_transport(cost, 0.3, 5.0))
    exported = export.export(solve)(jax.ShapeDtypeStruct(export.symbolic_shape("b, 4, 9"), jnp.float32))
    for batch in (1, 3):
        cost = jax.random.uniform(jax.random.key(batch), (batch, 4, 9))
        np.testing.assert_allclose(np.asarray(exported.call(cost)), np.asarray(solve(cost)), atol=1e-7)
