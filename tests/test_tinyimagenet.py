"""The Tiny-ImageNet builder prepared TF-free from fake files and read back (real ArrayRecords)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxdml.data import prepare, tinyimagenet
from jaxdml.data.tfds_sources import load_dataset


def fake_download(root, wnids, per_class=2, val_per_class=1):
    """A tiny-imagenet-200 tree: ``per_class`` train and ``val_per_class`` validation JPEGs per class; the
    first class's images are grayscale (as ~2% of the real ones)."""
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the file's order is not the label order
    lines = []
    for c, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        mode = "L" if c == 0 else "RGB"
        for k in range(per_class):
            pixels = rng.integers(0, 256, (64, 64) if mode == "L" else (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(images / f"{wnid}_{k}.JPEG", quality=95)
        for k in range(val_per_class):
            name = f"val_{c * val_per_class + k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_prepare_and_read_back(tmp_path, capsys):
    wnids = [f"n{1000 + 7 * i:08d}" for i in range(tinyimagenet.NUM_CLASSES)]
    manual, data_dir = tmp_path / "manual", tmp_path / "tfds"
    base = fake_download(manual, wnids)
    assert prepare.main(["--dataset", "tiny_imagenet", "--data_dir", str(data_dir), "--manual_dir", str(manual)]) == 0
    assert "tiny_imagenet prepared as ArrayRecord" in capsys.readouterr().out
    splits = load_dataset("tiny_imagenet", data_dir)
    assert (len(splits.train), len(splits.query)) == (400, 200) and splits.reference is None
    # labels follow the sorted wnids (ImageFolder's order), identical in both splits
    np.testing.assert_array_equal(np.bincount(splits.train.labels), np.full(200, 2))
    np.testing.assert_array_equal(np.sort(splits.query.labels), np.arange(200))
    first = int(np.flatnonzero(splits.train.labels == 0)[0])
    image = splits.train.image(first)
    assert image.shape == (64, 64, 3) and np.all(image[..., 0] == image[..., 1])  # grayscale -> RGB
    expected = np.asarray(Image.open(base / "train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG").convert("RGB"))
    assert any(np.array_equal(splits.train.image(i), expected) for i in np.flatnonzero(splits.train.labels == 0))


def test_missing_files_say_what_to_put_where(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(SystemExit, match=r"wnids\.txt"):
        prepare.main(["--dataset", "tiny_imagenet", "--data_dir", str(tmp_path / "tfds"),
                      "--manual_dir", str(tmp_path / "manual")])
