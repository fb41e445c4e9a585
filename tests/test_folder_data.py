"""data.name="folder": your own images (ImageFolder tree or CSV), split by class, checked before any work, trained on.

The images are real: scikit-learn's bundled handwritten digits written as PNG files, one folder per digit.
"""

import csv
import subprocess

import numpy as np
import pytest
from PIL import Image
from train_helpers import REPO, cli, tiny_config

from jaxdml.config import validate
from jaxdml.data import folder
from jaxdml.data.datasets import load_data
from jaxdml.data.sources import CorruptRecordError
from jaxdml.errors import ConfigError, UserError
from jaxdml.trainers import train_and_evaluate


def write_digits(root, classes=range(8), per_class=12, offset=0):
    """``root/<digit>/<n>.png``: ``per_class`` real 8x8 grayscale digits per class; returns the file paths."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for n in np.flatnonzero(digits.target == c)[offset:offset + per_class]:
            path = root / str(c) / f"{n}.png"
            Image.fromarray(np.round(digits.images[n] * 255 / 16).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def folder_config(path, **overrides):
    cfg = tiny_config(**{"data.name": "folder", "data.path": str(path), "train.batch_size": 8,
                         "eval.ks": (1, 2), **overrides})
    return cfg


def class_names(source):
    """The class (folder) name of every record of a split."""
    parent = getattr(source, "parent", source)
    indices = getattr(source, "indices", np.arange(len(source)))
    return {parent.class_names[parent.labels[i]] for i in indices}


def test_split_is_class_disjoint_fixed_by_split_seed_and_reads_rgb(tmp_path):
    write_digits(tmp_path / "img")
    cfg = folder_config(tmp_path / "img")
    splits = load_data(cfg.data)
    train, test = class_names(splits.train), class_names(splits.query)
    assert not train & test and train | test == {str(c) for c in range(8)} and len(test) == 4
    assert sorted(np.unique(splits.train.labels)) == [0, 1, 2, 3] and len(splits.train) == 48
    assert class_names(load_data(cfg.data).query) == test, "the same split again"
    cfg.data.split_seed = 3
    assert class_names(load_data(cfg.data).query) != test
    cfg.data.test_fraction = 0.25
    assert len(class_names(load_data(cfg.data).query)) == 2
    image = splits.train.image(0)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8, "grayscale PNG as RGB"


def test_csv_and_a_separate_test_folder(tmp_path):
    paths = write_digits(tmp_path / "img", classes=range(4))
    write_digits(tmp_path / "other", classes=range(4, 7), per_class=5)
    listing = tmp_path / "lists" / "train.csv"
    listing.parent.mkdir()
    with open(listing, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["path", "label"])
        for i, p in enumerate(paths):  # relative to the CSV's folder, and absolute
            rows.writerow([f"../img/{p.parent.name}/{p.name}" if i % 2 else str(p), f"digit {p.parent.name}"])
    cfg = folder_config(listing, **{"data.test_path": str(tmp_path / "other")})
    validate(cfg)
    splits = load_data(cfg.data)
    assert class_names(splits.train) == {f"digit {c}" for c in range(4)} and len(splits.train) == 48
    assert class_names(splits.query) == {"4", "5", "6"} and len(splits.query) == 15
    np.testing.assert_array_equal(splits.train.image(1), splits.train.image(1))


def _bad(tmp_path, case):
    root = tmp_path / "img"
    if case == "missing":
        return folder_config(tmp_path / "nowhere"), "does not exist"
    if case == "empty":
        root.mkdir()
        return folder_config(root), "holds no image files"
    if case == "one_class":
        write_digits(root, classes=[3])
        return folder_config(root), "holds 1 class; metric learning needs at least 2 training and 2 other test"
    if case == "three_classes":
        write_digits(root, classes=[1, 2, 3], per_class=4)
        return folder_config(root), "holds 3 classes; metric learning"
    if case == "fraction":
        write_digits(root, classes=range(5), per_class=4)
        return folder_config(root, **{"data.test_fraction": 0.1}), "data.test_fraction=0.1 of its 5 classes leaves 1 " \
                                                                    "class; metric learning"
    if case == "no_class_folders":
        for p in write_digits(root, classes=[1, 2], per_class=2):
            p.rename(root / f"{p.parent.name}_{p.name}")
        return folder_config(root), "no class sub-folders"
    if case == "not_images":
        write_digits(root, classes=range(4), per_class=4)
        (root / "2" / "notes.txt").write_text("hello")
        return folder_config(root), "1 file is not an image (by the extension): 2/notes.txt; remove them, or set " \
                                    "data.skip_corrupt=True"
    if case == "bad_csv_row":
        write_digits(root, classes=range(4), per_class=4)
        (tmp_path / "list.csv").write_text("img/0/0.png,0\nimg/1/1.png\nimg/2/2.png,2,extra\n")
        return folder_config(tmp_path / "list.csv"), "2 rows are not path,label (line 2, 3; line 2 reads 'img/1/1.png')"
    if case == "csv_missing_file":
        write_digits(root, classes=range(4), per_class=4)
        (tmp_path / "list.csv").write_text("img/0/0.png,0\nimg/1/nope.png,1\n")
        return folder_config(tmp_path / "list.csv"), "1 listed file does not exist: img/1/nope.png (line 2)"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "three_classes", "fraction", "no_class_folders",
                                  "not_images",
                                  "bad_csv_row", "csv_missing_file"])
def test_bad_input_is_one_line_naming_the_problem(tmp_path, case):
    cfg, expected = _bad(tmp_path, case)
    validate(cfg)
    with pytest.raises(UserError) as error:
        load_data(cfg.data)
    message = str(error.value)
    assert expected in message and "\n" not in message, message


def test_skip_corrupt_leaves_out_non_image_and_missing_files(tmp_path, caplog):
    cfg, _ = _bad(tmp_path, "not_images")
    cfg.data.skip_corrupt = True
    splits = load_data(cfg.data)
    assert len(splits.train) + len(splits.query) == 16 and "2/notes.txt" in caplog.text


def test_config_needs_data_path_with_folder_and_only_there():
    cfg = tiny_config(**{"data.name": "folder"})
    with pytest.raises(ConfigError, match=r"data.path=None must be set with data.name='folder': a folder with one "
                                          r"sub-folder of images per class"):
        validate(cfg)
    cfg = tiny_config(**{"data.path": "/some/where"})
    with pytest.raises(ConfigError, match=r"data.path='/some/where' is read only with data.name='folder'"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"data.test_fraction=1.0 must be in \(0, 1\)"):
        validate(folder_config("/x", **{"data.test_fraction": 1.0}))


def test_main_refuses_an_empty_folder_before_writing_anything(tmp_path):
    (tmp_path / "img").mkdir()
    workdir = tmp_path / "run"
    result = subprocess.run(cli(workdir, **{"data.name": "folder", "data.path": str(tmp_path / "img")}),
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.path=") and "holds no image files" in last and "ImageFolder" in last
    assert not workdir.exists()


def test_trains_on_a_folder_names_a_corrupt_image_and_skips_it_through_the_cache(tmp_path):
    write_digits(tmp_path / "img")
    _, test_classes = folder.split_classes([str(c) for c in range(8)], 0.5, 0)
    corrupt = tmp_path / "img" / test_classes[0] / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    overrides = {"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4}
    named = rf"cannot read or decode image {corrupt} .*set data.skip_corrupt=True"
    with pytest.raises(CorruptRecordError, match=named):
        train_and_evaluate(folder_config(tmp_path / "img", **overrides), tmp_path / "run1")
    cfg = folder_config(tmp_path / "img", **overrides, **{"data.skip_corrupt": True,
                                                          "data.cache_dir": str(tmp_path / "cache")})
    summary = train_and_evaluate(cfg, tmp_path / "run2")
    assert 0 <= summary["final"]["map_at_r"] <= 1 and np.isfinite(summary["final"]["precision_at_1"])
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.u8"))
    assert len(cached) == 2 and all(name.startswith("folder-") for name in cached), cached
