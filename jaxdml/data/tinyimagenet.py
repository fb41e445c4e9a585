"""TFDS builder for Tiny-ImageNet-200 (not in the TFDS catalogue), from the manual download, TF-free.

    python -m jaxdml.data.prepare --dataset tiny_imagenet --manual_dir DIR

Splits: ``train`` (100,000 images, 500 per class) and ``validation`` (10,000, 50 per class; the KD papers'
test set, since the official test split has no labels). ``label`` is the index of the class's WordNet id in
sorted order, which is torchvision ``ImageFolder``'s order over ``train/`` (the KD code bases' loader). The
64x64 JPEGs are stored unchanged (about 2% are grayscale; the reader converts them to RGB).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

NUM_CLASSES = 200
SPLITS = ("train", "validation")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) and extract it into the
manual directory (`--manual_dir`, default <data_dir>/downloads/manual), so that it holds
  tiny-imagenet-200/wnids.txt, tiny-imagenet-200/train/<wnid>/images/*.JPEG and
  tiny-imagenet-200/val/images/*.JPEG with tiny-imagenet-200/val/val_annotations.txt
(the files directly in the manual directory, without the tiny-imagenet-200/ level, are accepted too).
"""


class TinyImagenetManualFilesError(FileNotFoundError):
    """The manual download is missing or incomplete; the message says what to put where."""


def find_root(manual_dir: Path) -> Path:
    """The directory holding ``wnids.txt``, ``train/`` and ``val/``."""
    for root in (manual_dir / "tiny-imagenet-200", manual_dir):
        if (root / "wnids.txt").is_file():
            for needed in ("train", "val/images", "val/val_annotations.txt"):
                if not (root / needed).exists():
                    raise TinyImagenetManualFilesError(
                        f"Tiny-ImageNet: {root / needed} is missing.\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
            return root
    raise TinyImagenetManualFilesError(f"Tiny-ImageNet: no wnids.txt in {manual_dir} or "
                                       f"{manual_dir / 'tiny-imagenet-200'}.\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def class_ids(root: Path) -> list[str]:
    """The sorted WordNet ids of ``wnids.txt`` (the label order)."""
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    if len(wnids) != NUM_CLASSES:
        raise ValueError(f"Tiny-ImageNet: wnids.txt lists {len(wnids)} classes, expected {NUM_CLASSES}")
    return wnids


def validation_rows(root: Path) -> list[tuple[str, str]]:
    """(file name, wnid) of every line of ``val/val_annotations.txt`` (file, wnid, box, tab-separated)."""
    rows = []
    for number, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"val_annotations.txt line {number}: cannot parse {line!r}")
        rows.append((fields[0], fields[1]))
    return rows


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200: train / validation, label = index of the sorted WordNet id."""

    name = "tiny_imagenet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release (train / validation)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Tiny-ImageNet-200: 64x64 images of 200 ImageNet classes (CS231n).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                "wnid": tfds.features.Text(),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = find_root(Path(dl_manager.manual_dir))
        wnids = class_ids(root)
        labels = {wnid: index for index, wnid in enumerate(wnids)}
        train = [(path, wnid) for wnid in wnids for path in sorted((root / "train" / wnid / "images").glob("*"))]
        if not train:
            raise TinyImagenetManualFilesError(f"Tiny-ImageNet: no images under {root / 'train'}.\n"
                                               + MANUAL_DOWNLOAD_INSTRUCTIONS)
        val = [(root / "val" / "images" / name, wnid) for name, wnid in validation_rows(root)]
        unknown = sorted({wnid for _, wnid in val} - set(labels))
        if unknown:
            raise ValueError(f"Tiny-ImageNet: val_annotations.txt names classes not in wnids.txt: {unknown[:5]}")
        return {"train": self._generate_examples(train, labels), "validation": self._generate_examples(val, labels)}

    def _generate_examples(self, rows: list[tuple[Path, str]], labels: dict[str, int]
                           ) -> Iterator[tuple[str, dict]]:
        for path, wnid in rows:
            if not path.is_file():
                raise TinyImagenetManualFilesError(f"Tiny-ImageNet: {path} is missing")
            yield path.name, {"image": str(path), "label": labels[wnid], "wnid": wnid, "file_name": path.name}
