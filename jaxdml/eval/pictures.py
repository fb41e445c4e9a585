"""Retrieval pictures: a fixed set of queries, each followed by its top-k neighbours, framed by correctness.

The queries are chosen without randomness: the first valid image of each of the first ``queries`` classes (in
label order) that have another item in the reference set, so every picture of a run shows the same queries. The
neighbours come from :func:`jaxdml.eval.retrieval.knn`, the exact search the metrics use (same distances, same
tie-break). Images are shown as the model receives them before its normalisation (the evaluation resize and
centre crop of the uint8 image), enlarged by an integer factor (nearest neighbour) so that small images stay
readable. Frames: grey for the query, green for a neighbour of the query's class, red for another class.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxdml.data import transforms
from jaxdml.data.sources import Source
from jaxdml.eval.retrieval import knn

QUERY_COLOUR = (128, 128, 128)
CORRECT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (220, 0, 0)
BACKGROUND = (255, 255, 255)
MIN_TILE = 80  # pixels: images smaller than this are enlarged by a whole factor
BORDER = 3  # frame width in pixels
GAP = 3  # white space between tiles (and a wider one after the query column)


def choose_queries(query_labels: np.ndarray, query_valid: np.ndarray, reference_labels: np.ndarray | None,
                   reference_valid: np.ndarray | None, count: int) -> np.ndarray:
    """Rows of the first valid query of each of the first ``count`` classes (in label order) that have another
    valid item in the reference set (the query set itself when ``reference_labels`` is None)."""
    rows = np.flatnonzero(query_valid)
    labels = query_labels[rows]
    if reference_labels is None:
        ref_labels, extra = labels, 1
    else:
        ref_labels, extra = reference_labels[np.flatnonzero(reference_valid)], 0
    classes, counts = np.unique(ref_labels, return_counts=True)
    usable = set(classes[counts > extra].tolist())
    chosen = []
    for label in np.unique(labels):
        if label in usable:
            chosen.append(rows[np.argmax(labels == label)])
        if len(chosen) == count:
            break
    return np.asarray(chosen, np.int64)


def tile_scale(image_size: int) -> int:
    """The whole enlargement factor that brings an ``image_size`` image to at least :data:`MIN_TILE` pixels."""
    return max(1, math.ceil(MIN_TILE / image_size))


def framed(image: np.ndarray, colour: tuple[int, int, int], scale: int) -> np.ndarray:
    """``image`` (H, W, 3 uint8) enlarged ``scale`` times (nearest neighbour) inside a ``BORDER``-pixel frame."""
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    h, w = big.shape[:2]
    out = np.empty((h + 2 * BORDER, w + 2 * BORDER, 3), np.uint8)
    out[:] = colour
    out[BORDER:BORDER + h, BORDER:BORDER + w] = big
    return out


def grid(queries: list[np.ndarray], neighbours: list[list[np.ndarray]], correct: np.ndarray, scale: int
         ) -> np.ndarray:
    """The (H, W, 3) uint8 picture: one row per query (its image, then its neighbours left to right)."""
    rows = []
    for query, row_images, row_correct in zip(queries, neighbours, correct):
        tiles = [framed(query, QUERY_COLOUR, scale)]
        tiles += [framed(image, CORRECT_COLOUR if ok else WRONG_COLOUR, scale)
                  for image, ok in zip(row_images, row_correct)]
        h, w = tiles[0].shape[:2]
        row = np.empty((h, GAP + len(tiles) * (w + GAP) + 2 * GAP, 3), np.uint8)
        row[:] = BACKGROUND
        for i, tile in enumerate(tiles):
            x = GAP + i * (w + GAP) + (3 * GAP if i else 0)  # a wider gap between the query and its neighbours
            row[:, x:x + w] = tile
        rows.append(row)
    width = rows[0].shape[1]
    out = np.empty((GAP + len(rows) * (rows[0].shape[0] + GAP), width, 3), np.uint8)
    out[:] = BACKGROUND
    for i, row in enumerate(rows):
        y = GAP + i * (row.shape[0] + GAP)
        out[y:y + row.shape[0]] = row
    return out


def retrieval_picture(query_values, query_labels: np.ndarray, query_valid: np.ndarray, query_source: Source,
                      reference_values=None, reference_labels: np.ndarray | None = None,
                      reference_valid: np.ndarray | None = None, reference_source: Source | None = None, *,
                      queries: int, k: int, image_size: int, resize_size: int, mesh=None
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The picture of the first ``queries`` query classes and their ``k`` nearest neighbours (module docstring).

    ``*_values`` are the embeddings the metrics use (numpy, or row-sharded jax.Arrays with padding rows marked
    invalid); ``reference_values=None``: the query set is its own reference (each query excluded). Returns the
    (H, W, 3) uint8 picture and what it shows (``rows``: query rows, ``neighbours``: (n, k) reference rows,
    ``correct``: (n, k) bool), or None when no query class has another item to find.
    """
    same = reference_values is None
    ref_labels = query_labels if same else reference_labels
    ref_valid = query_valid if same else reference_valid
    rows = choose_queries(query_labels, query_valid, None if same else reference_labels, reference_valid, queries)
    if rows.size == 0:
        return None
    k = min(k, int(ref_valid.sum()) - int(same))
    _, idx = knn(query_values, reference_values, k=k, rows=rows, reference_valid=ref_valid, mesh=mesh)
    correct = ref_labels[idx] == query_labels[rows][:, None]
    source = query_source if same else reference_source

    def image(src: Source, index: int) -> np.ndarray:
        return transforms.eval_transform(src.image(int(index)), resize_size=resize_size, size=image_size)

    picture = grid([image(query_source, r) for r in rows], [[image(source, j) for j in row] for row in idx],
                   correct, tile_scale(image_size))
    return picture, {"rows": rows, "neighbours": idx, "correct": correct}


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Writes ``picture`` as a PNG (creating the directory); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(picture).save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    return path
