"""TFDS builder for DeepFashion In-Shop Clothes Retrieval (not in the TFDS catalogue).

Built from the manual download; JPEGs are handed to ``tfds.features.Image`` as file paths, so their
bytes are stored unchanged and preparing needs no TensorFlow::

    python -m jaxdml.data.prepare --dataset inshop --data_dir DIR --manual_dir MANUAL_DIR

Splits (the standard protocol): ``train`` 25,882 images of 3,997 items; ``query`` 14,218 and
``gallery`` 12,612 images of the 3,985 test items. ``label`` indexes the sorted unique item ids of the
whole partition list, so it is the same item across all three splits.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

NUM_ITEMS = 7_982  # 3,997 train + 3,985 test items in the official partition
SPLITS = ("train", "query", "gallery")
PARTITION_FILE = "list_eval_partition.txt"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download "In-shop Clothes Retrieval Benchmark" of DeepFashion
(https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html; the files are shared on
Google Drive / Baidu from that page, `img.zip` may need the password from the dataset's agreement).
Put into the manual directory (`--manual_dir`, default <data_dir>/downloads/manual):
  img/...                      the JPEG tree, i.e. `Img/img.zip` extracted (img/WOMEN/..., img/MEN/...);
                               `Img/img/...` is accepted too
  {PARTITION_FILE}     from `Eval/` (`Eval/{PARTITION_FILE}` is accepted too)
"""


class InshopManualFilesError(FileNotFoundError):
    """The manual download is missing or incomplete; the message says what to put where."""


def find_partition_file(manual_dir: Path) -> Path:
    """``list_eval_partition.txt`` at the top of ``manual_dir`` or under ``Eval/``."""
    for candidate in (manual_dir / PARTITION_FILE, manual_dir / "Eval" / PARTITION_FILE):
        if candidate.is_file():
            return candidate
    raise InshopManualFilesError(
        f"In-Shop: no {PARTITION_FILE} in {manual_dir} (nor in {manual_dir / 'Eval'}).\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def find_image_root(manual_dir: Path, first_image: str) -> Path:
    """The directory the partition's image names (``img/...``) are relative to."""
    for root in (manual_dir, manual_dir / "Img"):
        if (root / first_image).is_file():
            return root
    raise InshopManualFilesError(
        f"In-Shop: image {first_image!r} of {PARTITION_FILE} is neither in {manual_dir} nor in "
        f"{manual_dir / 'Img'}; extract img.zip there.\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def parse_partition(lines: Sequence[str]) -> list[tuple[str, str, str]]:
    """Rows ``(image_name, item_id, evaluation_status)`` of ``list_eval_partition.txt``.

    The file starts with the row count and a header line; the count is checked.
    """
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) < 2 or not lines[0].isdigit() or lines[1].split()[:2] != ["image_name", "item_id"]:
        raise ValueError(
            f"{PARTITION_FILE}: expected a count line and the header 'image_name item_id evaluation_status'"
        )
    rows = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in SPLITS:
            raise ValueError(f"{PARTITION_FILE} line {number}: cannot parse {line!r}")
        rows.append((fields[0], fields[1], fields[2]))
    if int(lines[0]) != len(rows):
        raise ValueError(f"{PARTITION_FILE}: header says {lines[0]} rows, found {len(rows)}")
    return rows


def item_labels(rows: Sequence[tuple[str, str, str]]) -> dict[str, int]:
    """Item id -> label: the index among the sorted unique item ids (same item, same label in all splits)."""
    return {item: index for index, item in enumerate(sorted({item for _, item, _ in rows}))}


class Inshop(tfds.core.GeneratorBasedBuilder):
    """DeepFashion In-Shop Clothes Retrieval: train / query / gallery, label = item index."""

    name = "inshop"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release (train / query / gallery from list_eval_partition.txt)."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        # ArrayRecord by default: the pipeline reads with random access (tfds.data_source).
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="DeepFashion In-Shop Clothes Retrieval benchmark (Liu et al., CVPR 2016).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=NUM_ITEMS),
                    "item_id": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
            citation=(
                "@inproceedings{liu2016deepfashion, title={DeepFashion: Powering Robust Clothes Recognition "
                "and Retrieval with Rich Annotations}, author={Liu, Ziwei and Luo, Ping and Qiu, Shi and "
                "Wang, Xiaogang and Tang, Xiaoou}, booktitle={CVPR}, year={2016}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = Path(dl_manager.manual_dir)
        rows = parse_partition(find_partition_file(manual_dir).read_text().splitlines())
        if not rows:
            raise ValueError(f"In-Shop: {PARTITION_FILE} lists no images")
        root = find_image_root(manual_dir, rows[0][0])
        labels = item_labels(rows)
        by_split: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for image_name, item_id, status in rows:
            by_split[status].append((image_name, item_id))
        return {split: self._generate_examples(root, by_split[split], labels) for split in SPLITS if by_split[split]}

    def _generate_examples(
        self, root: Path, rows: list[tuple[str, str]], labels: dict[str, int]
    ) -> Iterator[tuple[str, dict]]:
        for image_name, item_id in rows:
            path = root / image_name
            if not path.is_file():
                raise InshopManualFilesError(f"In-Shop: {path} listed in {PARTITION_FILE} is missing")
            yield (
                image_name,
                {
                    "image": str(path),
                    "label": labels[item_id],
                    "item_id": item_id,
                    "file_name": image_name,
                },
            )
