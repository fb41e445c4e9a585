"""Your own images as a dataset (``data.name = "folder"``): an ImageFolder tree or a CSV of ``path,label``.

``data.path`` is either a folder with one sub-folder per class (the images of a class anywhere below its
sub-folder, as torchvision's ``ImageFolder``) or a CSV file of ``path,label`` rows (paths relative to the CSV's
folder, or absolute; an optional ``path,label`` header). The test classes are either ``data.test_path`` (the same
layout) or a class-disjoint share ``data.test_fraction`` of ``data.path``'s classes, drawn with
``data.split_seed``. Everything that can be checked without decoding an image is checked here, before a run
writes anything: the path exists, it holds images, enough classes on each side (metric learning needs >= 2
training and >= 2 test classes), no malformed CSV row, no missing or non-image file (with ``data.skip_corrupt``
these are left out with a warning naming them). Images that cannot be decoded are found when read and named
(:class:`~jaxdml.data.sources.CorruptRecordError`), so the pipeline's skip-or-raise policy applies to them too.

The same listing serves ``python -m jaxdml.embed`` (:func:`list_images`), where labels are optional.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from jaxdml.data.sources import CorruptRecordError, DataSplits, SubsetSource, as_rgb_uint8
from jaxdml.errors import UserError

log = logging.getLogger(__name__)

NAME = "folder"  # the data.name of this dataset
# What counts as an image file (torchvision's IMG_EXTENSIONS, plus the formats PIL reads that photos come in).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
MIN_CLASSES = 2  # per side: metric learning needs pairs of classes to train on and to retrieve among
_SHOWN = 5  # file names quoted in one message
LAYOUT = "a folder with one sub-folder of images per class (ImageFolder layout) or a CSV file of path,label rows"
ANY_LAYOUT = "an image, a folder of images, or a CSV / text file listing image paths"


class FolderDataError(UserError, ValueError):
    """``data.path`` / ``data.test_path`` (or ``--images``) cannot be read as a labelled image set; the message says
    why and how to fix it."""


def _names(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 (EXIF orientation applied; grayscale, palette, alpha converted to RGB)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Listing:
    """Image files with optional class names: ``paths`` (absolute), ``classes`` (one per path, or None)."""

    paths: list[str]
    classes: list[str] | None
    root: str  # what was listed (a folder or a list file), for messages


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below ``root``, sorted, hidden files and folders left out."""
    images, others = [], []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            (images if is_image_file(path) else others).append(path)
    return images, others


def _list_folder(root: Path, key: str, skip_corrupt: bool, skip_hint: str, require_classes: bool) -> Listing:
    images, others = _walk(root)
    in_classes = [p for p in images if len(p.relative_to(root).parts) >= 2]
    loose = [p for p in images if len(p.relative_to(root).parts) == 1]
    labelled = bool(in_classes) and not loose
    if require_classes and not labelled:
        if not images:
            raise FolderDataError(f"{key}={str(root)!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                                  f"give {LAYOUT}.")
        where = "no class sub-folders" if not in_classes else f"{len(loose)} images outside the class sub-folders"
        raise FolderDataError(f"{key}={str(root)!r} holds {where} ({_names([p.name for p in loose])}); put each "
                              f"class's images in a sub-folder named after the class (ImageFolder layout), or give a "
                              f"CSV file of path,label rows.")
    others = [p for p in others if len(p.relative_to(root).parts) >= 2 or not require_classes]
    if others:
        names = [str(p.relative_to(root)) for p in others]
        if require_classes and not skip_corrupt:
            what = _count(len(others), "file is not an image", "files are not images")
            raise FolderDataError(f"{key}={str(root)!r}: {what} (by the extension): {_names(names)}; remove them, or "
                                  f"set {skip_hint} to skip them.")
        log.warning("%s: skipping %d files that are not images: %s", root, len(others), _names(names))
    if not images:
        raise FolderDataError(f"{key}={str(root)!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); give "
                              f"{LAYOUT if require_classes else ANY_LAYOUT}.")
    classes = [p.relative_to(root).parts[0] for p in images] if labelled else None
    return Listing([str(p.absolute()) for p in images], classes, str(root))


def _read_rows(path: Path, key: str) -> list[tuple[int, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FolderDataError(f"{key}={str(path)!r} cannot be read as a text file of image paths ({error}); give "
                              f"{LAYOUT} (--images: {ANY_LAYOUT}).") from None
    return [(n, row) for n, row in rows if any(row)]


def _list_file(path: Path, key: str, skip_corrupt: bool, skip_hint: str, require_labels: bool) -> Listing:
    """A CSV (``path,label`` rows) or, without labels, a list of paths, one a line; relative paths are relative to
    the file's folder."""
    rows = _read_rows(path, key)
    if rows and [c.lower() for c in rows[0][1]] in (["path", "label"], ["path"]):
        rows = rows[1:]
    if not rows:
        raise FolderDataError(f"{key}={str(path)!r} lists no images; give {LAYOUT if require_labels else ANY_LAYOUT}.")
    with_labels = require_labels or len(rows[0][1]) == 2
    width = 2 if with_labels else 1
    bad = [n for n, row in rows if len(row) != width or not all(row)]
    if bad:
        form = "path,label" if with_labels else "one path"
        example = ",".join(next(row for n, row in rows if n == bad[0]))
        lines = _names([str(n) for n in bad])
        what = _count(len(bad), "row is", "rows are")
        raise FolderDataError(f"{key}={str(path)!r}: {what} not {form} (line {lines}; line {bad[0]} reads "
                              f"{example!r}); fix or remove them (quote paths that hold commas).")
    base = path.parent
    paths = [str((base / row[0]).absolute()) if not os.path.isabs(row[0]) else row[0] for _, row in rows]
    classes = [row[1] for _, row in rows] if with_labels else None
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        names = [f"{rows[i][1][0]} (line {rows[i][0]})" for i in missing]
        if not skip_corrupt:
            what = _count(len(missing), "listed file does", "listed files do")
            raise FolderDataError(f"{key}={str(path)!r}: {what} not exist: {_names(names)}; "
                                  f"fix the paths (relative ones are relative to {str(base)!r}), or set {skip_hint} to "
                                  f"leave them out.")
        log.warning("%s: leaving out %d listed files that do not exist: %s", path, len(missing), _names(names))
        keep = sorted(set(range(len(paths))) - set(missing))
        paths = [paths[i] for i in keep]
        classes = None if classes is None else [classes[i] for i in keep]
        if not paths:
            raise FolderDataError(f"{key}={str(path)!r}: none of the listed files exists.")
    return Listing(paths, classes, str(path))


def list_images(path: str | os.PathLike, *, key: str = "data.path", skip_corrupt: bool = False,
                skip_hint: str = "data.skip_corrupt=True", require_labels: bool = False) -> Listing:
    """The image files ``path`` names: a folder (recursively; classes from the first-level sub-folders when every
    image lies in one), a CSV of ``path,label`` / a list of paths, or one image file. Raises
    :class:`FolderDataError` (naming ``key`` and the fix) for a missing path, no images, bad rows, missing or
    non-image files (the last two left out, with a warning, when ``skip_corrupt``)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FolderDataError(f"{key}={str(path)!r} does not exist; give {LAYOUT if require_labels else ANY_LAYOUT}.")
    if root.is_dir():
        return _list_folder(root, key, skip_corrupt, skip_hint, require_labels)
    if is_image_file(root) and not require_labels:
        return Listing([str(root.absolute())], None, str(root))
    return _list_file(root, key, skip_corrupt, skip_hint, require_labels)


def sort_classes(names: Any) -> list[str]:
    """Class names in order: numerically where every name is an integer ("2" before "10"), else as strings."""
    names = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


class FileSource:
    """Image files as a :class:`~jaxdml.data.sources.Source`: ``labels`` index ``class_names``; decoded on read.

    ``name`` carries a digest of the files' paths, sizes and modification times, so the decode-once cache
    (:mod:`jaxdml.data.cache`, keyed by the name) is rebuilt when the images change. Pickles as its paths (grain
    workers)."""

    def __init__(self, name: str, paths: list[str], classes: list[str] | None, *,
                 skip_hint: str = "data.skip_corrupt=True", class_names: list[str] | None = None) -> None:
        self.paths = np.asarray(paths, dtype=str)
        if classes is None:
            self.class_names: list[str] = []
            self.labels = np.zeros(len(paths), np.int32)
        else:
            self.class_names = class_names if class_names is not None else sort_classes(classes)
            index = {c: i for i, c in enumerate(self.class_names)}
            self.labels = np.asarray([index[c] for c in classes], np.int32)
        self.skip_hint = skip_hint
        self.name = f"{name}-{fingerprint(paths)}"

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, {len(self)} images, {len(self.class_names)} classes)"

    def image(self, index: int) -> np.ndarray:
        path = str(self.paths[int(index)])
        try:
            return as_rgb_uint8(decode_image_file(path))
        except Exception as error:
            raise CorruptRecordError(f"cannot read or decode image {path} (record {index} of {self.name}): "
                                     f"{type(error).__name__}: {error}. Replace or remove the file, or set "
                                     f"{self.skip_hint} to skip such images.") from error


def fingerprint(paths: list[str]) -> str:
    """A short digest of the files' paths, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:12]


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _check_classes(count: int, key: str, what: str, fix: str, needed: int = MIN_CLASSES) -> None:
    if count < needed:
        raise FolderDataError(f"{key} {what} {_count(count, 'class', 'classes')}; metric learning needs at least "
                              f"{MIN_CLASSES} training and {MIN_CLASSES} other test classes; {fix}.")


def split_classes(class_names: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train classes, test classes): a random ``test_fraction`` of the classes (at least one) for testing, drawn
    with ``seed``; each list in the order of ``class_names``."""
    count = max(1, round(test_fraction * len(class_names)))
    test = set(np.random.default_rng(seed).permutation(len(class_names))[:count].tolist())
    return ([c for i, c in enumerate(class_names) if i not in test],
            [c for i, c in enumerate(class_names) if i in test])


def load_folder(cfg: Any) -> DataSplits:
    """Train and test sources of ``data.path`` (``cfg`` is the ``data`` section): split by class, or
    ``data.test_path`` for the test classes. Raises :class:`FolderDataError` before anything is decoded."""
    listing = list_images(cfg.path, key="data.path", skip_corrupt=cfg.skip_corrupt, require_labels=True)
    full = FileSource(NAME, listing.paths, listing.classes)
    classes = full.class_names
    if cfg.test_path is None:
        _check_classes(len(classes), f"data.path={cfg.path!r}", "holds",
                       "add classes, or give the test classes as data.test_path", needed=2 * MIN_CLASSES)
        train_names, test_names = split_classes(classes, cfg.test_fraction, cfg.split_seed)
        share = f"data.test_fraction={cfg.test_fraction} of its {len(classes)} classes"
        _check_classes(len(test_names), share, "leaves", "raise data.test_fraction")
        _check_classes(len(train_names), share, "leaves", "lower data.test_fraction")
        keep = set(train_names)
        is_train = np.asarray([classes[label] in keep for label in full.labels])
        train = SubsetSource(f"{full.name}[train]", full, np.flatnonzero(is_train))
        test = SubsetSource(f"{full.name}[test]", full, np.flatnonzero(~is_train))
        log.info("data.path=%s: %d classes, %d for training and %d for testing (data.split_seed=%d)", cfg.path,
                 len(classes), len(train_names), len(test_names), cfg.split_seed)
        return DataSplits(train=train, query=test)
    tested = list_images(cfg.test_path, key="data.test_path", skip_corrupt=cfg.skip_corrupt, require_labels=True)
    test = FileSource(f"{NAME}-test", tested.paths, tested.classes)
    _check_classes(len(classes), f"data.path={cfg.path!r}", "holds", "add training classes")
    _check_classes(len(test.class_names), f"data.test_path={cfg.test_path!r}", "holds", "add test classes")
    shared = sorted(set(classes) & set(test.class_names))
    if shared:
        log.warning("data.path and data.test_path share %d classes (%s): the test is not class-disjoint", len(shared),
                    _names(shared))
    return DataSplits(train=full, query=test)


def write_digit_pairs(root: str | os.PathLike) -> int:
    """Writes the embedded digit-pairs images (train and test: 100 two-digit numbers, 30 images each) as PNG files in
    the ImageFolder layout ``root/<number>/<n>.png``, a ready-made "own images" folder; returns the image count."""
    from jaxdml.data.digits import load_digit_pairs, split_numbers

    root = Path(root)
    count = 0
    for source, numbers in zip(load_digit_pairs(), split_numbers()):
        for index in range(len(source)):
            folder = root / f"{numbers[source.labels[index]]:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[index][..., 0]).save(folder / f"{count:04d}.png")
            count += 1
    return count


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m jaxdml.data.folder DIR  (writes the embedded digit pairs there as PNG files, one "
                 "sub-folder per class)")
    print(f"wrote {write_digit_pairs(sys.argv[1])} images to {sys.argv[1]}")
