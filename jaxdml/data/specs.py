"""The real datasets jaxdml reads through TFDS: names, descriptions and how each is split."""

from __future__ import annotations

import dataclasses

from jaxdml.data import inshop as _inshop  # registers the "inshop" builder with tfds
from jaxdml.data import tinyimagenet as _tinyimagenet  # registers "tiny_imagenet"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one supported dataset is read and split."""

    tfds_name: str
    description: str
    label_key: str = "label"
    super_label_key: str | None = None
    # CUB / Cars: train+test concatenated; original labels < num_train_classes train, the rest test.
    num_classes: int | None = None
    num_train_classes: int | None = None
    # Shipped splits (train, query[, reference]) when there is no class re-split.
    splits: tuple[str, ...] = ("train", "test")
    needs_tensorflow: bool = True  # to prepare (stock builders call tf.io.gfile); reading never does
    manual_required: bool = False
    manual_note: str = ""
    classification: bool = False  # train and test share all classes (ids 0..num_classes-1 as shipped)


SPECS: dict[str, DatasetSpec] = {
    "caltech_birds2011": DatasetSpec(
        tfds_name="caltech_birds2011",
        description="CUB-200-2011: 11,788 bird images, 200 species; classes 1-100 train, 101-200 test.",
        num_classes=200,
        num_train_classes=100,
        manual_note=(
            "TFDS downloads CUB_200_2011.tgz and segmentations.tgz from data.caltech.edu; if that fails, put "
            "those two files (the originals: TFDS checks their SHA-256) in --manual_dir. Preparing CUB also "
            "needs OpenCV (pip install opencv-python-headless) for the segmentation masks."
        ),
    ),
    "cars196": DatasetSpec(
        tfds_name="cars196",
        description="Cars196: 16,185 car images, 196 models; classes 1-98 train, 99-196 test.",
        num_classes=196,
        num_train_classes=98,
        manual_required=True,
        manual_note=(
            "The original download URLs (ai.stanford.edu/~jkrause) are dead: put the original files "
            "cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat (TFDS checks "
            "their SHA-256, so they must be the unmodified originals, e.g. from a mirror) in --manual_dir."
        ),
    ),
    "stanford_online_products": DatasetSpec(
        tfds_name="stanford_online_products",
        description="Stanford Online Products: 120,053 images, 22,634 products; 11,318 train / 11,316 test.",
        label_key="class_id",
        super_label_key="super_class_id",
        manual_note=(
            "TFDS downloads Stanford_Online_Products.zip from ftp://cs.stanford.edu; if that fails, put the "
            "original zip in --manual_dir."
        ),
    ),
    "inshop": DatasetSpec(
        tfds_name=_inshop.Inshop.name,
        description="DeepFashion In-Shop: 3,997 train items (25,882 images); query 14,218 / gallery 12,612.",
        splits=_inshop.SPLITS,
        needs_tensorflow=False,
        manual_required=True,
        manual_note=_inshop.MANUAL_DOWNLOAD_INSTRUCTIONS.strip(),
    ),
    "cifar10": DatasetSpec(
        tfds_name="cifar10",
        description="CIFAR-10 (classification): 50,000 train / 10,000 test 32x32 images, 10 classes.",
        num_classes=10,
        classification=True,
        manual_note="TFDS downloads cifar-10-binary.tar.gz from cs.toronto.edu.",
    ),
    "cifar100": DatasetSpec(
        tfds_name="cifar100",
        description="CIFAR-100 (classification): 50,000 train / 10,000 test 32x32 images, 100 classes.",
        num_classes=100,
        classification=True,
        manual_note="TFDS downloads cifar-100-binary.tar.gz from cs.toronto.edu.",
    ),
    "tiny_imagenet": DatasetSpec(
        tfds_name=_tinyimagenet.TinyImagenet.name,
        description="Tiny-ImageNet-200 (classification): 100,000 train / 10,000 validation 64x64 images, 200 "
                    "classes.",
        num_classes=_tinyimagenet.NUM_CLASSES,
        splits=_tinyimagenet.SPLITS,
        classification=True,
        needs_tensorflow=False,
        manual_required=True,
        manual_note=_tinyimagenet.MANUAL_DOWNLOAD_INSTRUCTIONS.strip(),
    ),
    "imagenet2012": DatasetSpec(
        tfds_name="imagenet2012",
        description="ImageNet ILSVRC-2012 (classification): 1,281,167 train / 50,000 validation images, 1,000 "
                    "classes.",
        num_classes=1000,
        splits=("train", "validation"),
        classification=True,
        manual_required=True,
        manual_note=(
            "TFDS cannot download ImageNet: put the originals ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            "(image-net.org, after registering) in --manual_dir; preparing takes hours and about 150 GB."
        ),
    ),
}

DATASETS: dict[str, str] = {name: spec.description for name, spec in SPECS.items()}
"""Supported dataset names -> one-line description."""
