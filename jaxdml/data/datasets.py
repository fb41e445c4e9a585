"""From ``config.data`` to the sources a run needs: train, optional validation, query and reference."""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from jaxdml.data.sources import Source, split_validation_classes

EMBEDDED = ("digit_pairs", "digit_collage", "digit_numbers")


@dataclasses.dataclass(frozen=True)
class DataSplits:
    train: Source
    val: Source | None  # class-disjoint held-out training classes (model selection), if any
    query: Source  # the test set (In-Shop: its query set)
    reference: Source | None  # None: the query set is its own reference (self-matches excluded)


def load_data(cfg: ml_collections.ConfigDict) -> DataSplits:
    """The splits of ``cfg.name`` (``cfg`` is the ``data`` section of a config)."""
    if cfg.name == "digit_pairs":
        from jaxdml.data.digits import load_digit_pairs

        train, query = load_digit_pairs()
        reference = None
    elif cfg.name == "digit_collage":
        from jaxdml.data.digits import load_digit_collage

        train, query = load_digit_collage()
        reference = None
    elif cfg.name == "digit_numbers":
        from jaxdml.data.digits import load_digit_numbers

        train, query = load_digit_numbers()
        reference = None
    else:
        from jaxdml.data.tfds_sources import load_dataset

        splits = load_dataset(cfg.name, cfg.data_dir)
        train, query, reference = splits.train, splits.query, splits.reference
        if cfg.cache_dir:
            from jaxdml.data.cache import cached

            directory = cache_directory(cfg.cache_dir, cfg.data_dir)
            train, query = (cached(s, cfg.resize_size, directory, cfg.num_workers) for s in (train, query))
            if reference is not None:
                reference = cached(reference, cfg.resize_size, directory, cfg.num_workers)
    train, val = split_validation_classes(train, cfg.val_fraction)
    return DataSplits(train, val, query, reference)


def cache_directory(cache_dir: str, data_dir: str | None) -> str:
    """``data.cache_dir``, with ``"default"`` meaning ``<TFDS data_dir>/jaxdml_cache``."""
    if cache_dir != "default":
        return cache_dir
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return os.path.join(root, "jaxdml_cache")
