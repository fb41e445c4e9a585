"""Prepares a real dataset as TFDS ArrayRecord files, once; training then reads them without TensorFlow.

    python -m jaxdml.data.prepare --dataset NAME [--data_dir DIR] [--manual_dir DIR]

NAME: caltech_birds2011, cars196, stanford_online_products, inshop, cifar10, cifar100 or tiny_imagenet. The
stock TFDS builders (CUB, Cars, SOP, CIFAR) need TensorFlow to prepare (``pip install -e '.[prepare]'``);
In-Shop (``jaxdml.data.inshop``) and Tiny-ImageNet (``jaxdml.data.tinyimagenet``) do not. ``--manual_dir``
holds files downloaded by hand (In-Shop and Tiny-ImageNet always; Cars196, whose original URLs are dead;
CUB/SOP only when their download fails). Prints where the data went and, after the class re-split,
images and classes per split.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

import numpy as np

from jaxdml.data.inshop import InshopManualFilesError
from jaxdml.data.sources import Source
from jaxdml.data.tinyimagenet import TinyImagenetManualFilesError

PREPARE_EXTRA = "pip install -e '.[prepare]'"


def missing_requirements(name: str) -> list[str]:
    """Modules that preparing ``name`` needs and that are not installed, with what to install."""
    from jaxdml.data.specs import SPECS

    missing = []
    if importlib.util.find_spec("importlib_resources") is None:
        missing.append(f"importlib_resources (tfds needs it to prepare): {PREPARE_EXTRA}")
    if SPECS[name].needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        missing.append(f"TensorFlow (the stock TFDS builder for {name} uses tf.io.gfile): {PREPARE_EXTRA}")
    if name == "caltech_birds2011" and importlib.util.find_spec("cv2") is None:
        missing.append("OpenCV (CUB's segmentation masks): pip install opencv-python-headless")
    return missing


def describe_source(role: str, source: Source | None) -> str:
    """One summary line: images and classes of one split."""
    if source is None:
        return f"  {role:<10} (the query set is its own reference)"
    classes = len(np.unique(source.labels))
    return f"  {role:<10} {len(source):>7,} images {classes:>6,} classes  ({source.name})"


def prepare(name: str, data_dir: str | None, manual_dir: str | None) -> str:
    """Downloads (or takes from ``manual_dir``) and writes ``name`` as ArrayRecord; returns the data root."""
    import tensorflow_datasets as tfds

    from jaxdml.data.specs import SPECS

    spec = SPECS[name]
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        formats = builder.info.available_file_formats()
        if tfds.core.FileFormat.ARRAY_RECORD not in formats:
            raise SystemExit(
                f"error: {builder.data_dir} holds {name} as {', '.join(sorted(f.value for f in formats))}, "
                "not ArrayRecord; use another --data_dir or delete that folder."
            )
        print(f"{name} is already prepared at {builder.data_dir}")
        return os.fspath(builder.data_dir_root)
    if spec.manual_required and manual_dir is None:
        default = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
        print(f"note: no --manual_dir given, looking in {default}\n{spec.manual_note}", file=sys.stderr)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(file_format="array_record", download_config=config)
    except (InshopManualFilesError, TinyImagenetManualFilesError) as err:  # files missing in the manual directory
        raise SystemExit(f"error: {err}") from err
    except AssertionError as err:  # tfds: "Manual directory ... does not exist or is empty"
        if "Manual directory" not in str(err):
            raise
        raise SystemExit(f"error: {err}\n{spec.manual_note}") from err
    print(f"{name} prepared as ArrayRecord at {builder.data_dir}")
    return os.fspath(builder.data_dir_root)


def main(argv: Sequence[str] | None = None) -> int:
    from jaxdml.data.specs import DATASETS
    from jaxdml.data.tfds_sources import load_dataset

    parser = argparse.ArgumentParser(
        prog="python -m jaxdml.data.prepare",
        description=__doc__.split("\n\n")[0],
        epilog="datasets:\n" + "\n".join(f"  {name}: {text}" for name, text in DATASETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)")
    parser.add_argument(
        "--manual_dir", default=None, help="files downloaded by hand (default: DATA_DIR/downloads/manual)"
    )
    args = parser.parse_args(argv)

    missing = missing_requirements(args.dataset)
    if missing:
        print(f"error: preparing {args.dataset} needs:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    root = prepare(args.dataset, args.data_dir, args.manual_dir)
    splits = load_dataset(args.dataset, root)
    print(f"{args.dataset} at {root}; train with --config.data.name={args.dataset} --config.data.data_dir={root}")
    print(describe_source("train", splits.train))
    print(describe_source("query", splits.query))
    print(describe_source("reference", splits.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
