"""From ``config.data`` to the sources a run needs: train, optional validation, query and reference."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections

from jaxdml.data import digits, folder
from jaxdml.data.sources import DataSplits, Source, split_fold, split_validation_classes
from jaxdml.data.specs import DATASETS as TFDS_DATASETS

# The embedded datasets (no download): name -> loader of (train, test).
EMBEDDED: dict[str, Callable[[], tuple[Source, Source]]] = {
    "digit_pairs": digits.load_digit_pairs,
    "digit_collage": digits.load_digit_collage,
    "digit_numbers": digits.load_digit_numbers,
}
# data.name -> description; the one list of valid names.
DATASETS: dict[str, str] = {**{name: f"embedded ({name})" for name in EMBEDDED}, **TFDS_DATASETS,
                             folder.NAME: f"your own images in data.path: {folder.LAYOUT}"}


def load_data(cfg: ml_collections.ConfigDict) -> DataSplits:
    """The splits of ``cfg.name`` (``cfg`` is the ``data`` section of a config)."""
    if cfg.name in EMBEDDED:
        train, query = EMBEDDED[cfg.name]()
        splits = DataSplits(train=train, query=query)
    else:
        if cfg.name == folder.NAME:
            splits = folder.load_folder(cfg)
        else:
            from jaxdml.data.tfds_sources import load_dataset

            splits = load_dataset(cfg.name, cfg.data_dir)
        if cfg.cache_dir:
            from jaxdml.data.cache import cached

            directory = cache_directory(cfg.cache_dir, cfg.data_dir)
            splits = DataSplits(*(None if s is None else cached(s, cfg.resize_size, directory, cfg.num_workers)
                                  for s in (splits.train, splits.query, splits.reference)))
    if cfg.folds and cfg.fold >= 0:  # model `fold` of the fold protocol: validated on its fold
        train, val = split_fold(splits.train, cfg.folds, cfg.fold)
    else:
        train, val = split_validation_classes(splits.train, cfg.val_fraction)
    return dataclasses.replace(splits, train=train, val=val)


def cache_directory(cache_dir: str, data_dir: str | None) -> str:
    """``data.cache_dir``, with ``"default"`` meaning ``<TFDS data_dir>/jaxdml_cache``."""
    if cache_dir != "default":
        return cache_dir
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return os.path.join(root, "jaxdml_cache")
