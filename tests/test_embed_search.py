"""python -m jaxdml.embed and python -m jaxdml.search on a tiny trained run and a folder of real digit PNGs."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_folder_data import write_digits
from train_helpers import REPO, tiny_config, worker_env

from jaxdml import embed, search
from jaxdml.data.folder import decode_image_file
from jaxdml.data.sources import as_rgb_uint8
from jaxdml.data.transforms import eval_transform
from jaxdml.errors import UserError
from jaxdml.train.state import model_variables
from jaxdml.trainers import create_trainer, train_and_evaluate

STEPS = {"train.num_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, summary, image folder, index file) of a 4-step digit-pairs run; the index embeds the
    folder with its latest checkpoint."""
    root = tmp_path_factory.mktemp("embed")
    cfg = tiny_config(**STEPS)
    summary = train_and_evaluate(cfg, root / "run")
    write_digits(root / "img", classes=range(8), per_class=6)
    embed.run(str(root / "run"), str(root / "img"), str(root / "index.npz"), "latest")
    return root / "run", cfg, summary, root / "img", root / "index.npz"


def direct_embeddings(workdir, cfg, paths):
    """The model applied to the images by hand: the trainer's restored state, the evaluation transform."""
    trainer = create_trainer(cfg, workdir)  # restores the newest checkpoint
    trainer.close()
    state = trainer.state
    images = np.stack([eval_transform(as_rgb_uint8(decode_image_file(p)), resize_size=cfg.data.resize_size,
                                      size=cfg.data.image_size) for p in paths])
    out = trainer.model.apply(model_variables(state.params, state.model_state), images, train=False)
    return np.asarray(jax.device_get(out["embedding"]))


def test_embed_cli_on_four_devices_equals_the_model_applied_directly(run, tmp_path):
    workdir, cfg, _, images, _ = run
    out = tmp_path / "sub" / "e.npz"
    result = subprocess.run([sys.executable, "-m", "jaxdml.embed", f"--workdir={workdir}", f"--images={images}",
                             f"--out={out}", "--step=latest", "--batch_size=12"], capture_output=True, text=True,
                            cwd=REPO, env=worker_env(devices=4))
    assert result.returncode == 0, result.stderr
    assert "embedded 48 images with step 4" in result.stderr
    with np.load(out, allow_pickle=False) as index:
        assert int(index["step"]) == 4 and str(index["workdir"]) == str(workdir.absolute())
        assert str(index["embedding_norm"]) == "l2"
        paths, labels, embeddings = index["paths"], index["labels"], index["embeddings"]
    assert embeddings.shape == (48, cfg.model.embedding_dim) and embeddings.dtype == np.float32
    assert [p.split("/")[-2] for p in paths] == list(labels) and sorted(set(labels)) == [str(c) for c in range(8)]
    np.testing.assert_allclose(embeddings, direct_embeddings(workdir, cfg, paths), atol=2e-6, rtol=0)


def test_steps_best_latest_and_numbered(run):
    workdir, _, summary, _, _ = run
    assert embed.load_trained(workdir, "best").step == summary["best_step"]
    assert embed.load_trained(workdir, "latest").step == 4
    assert embed.load_trained(workdir, "2").step == 2


def brute_force(query, reference, k, exclude_self=False):
    distances = ((query[:, None, :].astype(np.float64) - reference[None].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def test_search_of_the_index_itself_equals_brute_force_without_self_matches(run):
    _, _, _, _, index_file = run
    records = search.run(str(index_file), str(index_file), 5)
    index = search.load_index(index_file)
    distances, order = brute_force(index.embeddings, index.embeddings, 5, exclude_self=True)
    assert len(records) == 48
    np.testing.assert_array_equal([[n["index"] for n in r["neighbours"]] for r in records], order)
    np.testing.assert_allclose([[n["distance"] for n in r["neighbours"]] for r in records], distances, atol=1e-5)
    first = records[0]
    assert first["query"] == index.paths[0] and first["label"] == index.labels[0]
    assert first["neighbours"][0]["path"] == index.paths[order[0, 0]]
    np.testing.assert_allclose(first["neighbours"][0]["similarity"], 1 - distances[0, 0] / 2, atol=1e-5)


def test_search_cli_embeds_a_query_image_with_the_index_model(run, tmp_path):
    _, _, _, images, index_file = run
    index = search.load_index(index_file)
    row = 20
    result = subprocess.run([sys.executable, "-m", "jaxdml.search", f"--index={index_file}",
                             f"--query={index.paths[row]}", "-k", "3", "--json"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    _, order = brute_force(index.embeddings[row:row + 1], index.embeddings, 3)
    assert [n["index"] for n in record["neighbours"]] == list(order[0])
    assert record["neighbours"][0]["path"] == index.paths[row] and record["neighbours"][0]["distance"] < 1e-5
    text = search.format_table(search.run(str(index_file), str(images / "3"), 2))
    assert "query 1/6:" in text and "rank   distance   cosine  label  path" in text


def test_a_query_npz_of_another_model_or_dimension_is_refused(run, tmp_path):
    workdir, _, _, _, index_file = run
    with np.load(index_file) as data:
        arrays = dict(data)
    other = tmp_path / "other.npz"
    np.savez(other, **{**arrays, "embeddings": arrays["embeddings"][:, :8]})
    with pytest.raises(UserError, match="query embeddings are 8-d but the index's are 16-d"):
        search.run(str(index_file), str(other), 3)
    np.savez(other, **{**arrays, "model": np.asarray(f"{workdir}:2")})
    with pytest.raises(UserError, match="embed both with one model"):
        search.run(str(index_file), str(other), 3)
    index = search.load_index(index_file)
    with pytest.raises(UserError, match=r"-k 49 must be between 1 and the 48 items of the index .*use e.g. -k 48"):
        search.search(index, index, 49)
    with pytest.raises(UserError, match="less the query itself"):
        search.run(str(index_file), str(index_file), 48)


def test_workdir_problems_are_named_with_the_fix(run, tmp_path):
    workdir, _, _, images, _ = run
    with pytest.raises(UserError, match="does not exist, so it holds no jaxdml run"):
        embed.load_trained(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(workdir / "config.json", bare / "config.json")
    with pytest.raises(UserError, match="has no checkpoints yet"):
        embed.load_trained(bare)
    with pytest.raises(UserError, match=r"--step=7: no checkpoint of step 7 in .*; use best, latest or one of the "
                                        r"saved steps: 2, 4\."):
        embed.load_trained(workdir, "7")
    other = tmp_path / "other_arch"
    shutil.copytree(workdir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["embedding_dim"] = 32
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"does not fit the model its config.json describes: params/head/projection/"
                                        r"bias is float32\[16\], the model has float32\[32\]"):
        embed.load_trained(other, "latest")
    with pytest.raises(UserError, match=r"--out='x.txt' must end in .npz"):
        embed.run(str(workdir), str(images), "x.txt")


def test_a_corrupt_image_is_named_and_skipped_on_request(run, tmp_path):
    workdir, _, _, _, _ = run
    folder = tmp_path / "img"
    write_digits(folder, classes=range(2), per_class=2)
    broken = folder / "1" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    (folder / "1" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=rf"cannot read or decode image {broken} .* set --skip_corrupt to skip"):
        embed.run(str(workdir), str(folder), str(tmp_path / "e.npz"), "latest")
    index = embed.run(str(workdir), str(folder), str(tmp_path / "e.npz"), "latest", skip_corrupt=True)
    assert len(index["paths"]) == 4 and str(broken) not in index["paths"]


def test_cli_errors_are_one_line_with_status_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdml.search", f"--index={tmp_path / 'nope.npz'}",
                             "--query=q.png"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --index='{tmp_path / 'nope.npz'}' does not "
                                                             f"exist; write one with python -m jaxdml.embed")
