"""Nearest neighbours in an index written by ``python -m jaxdml.embed``, with the exact kNN the metrics use.

    python -m jaxdml.search --index embeddings.npz --query photo.jpg -k 10
    python -m jaxdml.search --index embeddings.npz --query queries.npz -k 5 --json

``--query`` is an ``.npz`` of ``jaxdml.embed`` (every row is a query), or images (one image, a folder, a CSV / text
list), embedded with the model that made the index (the ``workdir`` and ``step`` it records; ``--workdir`` /
``--step`` to override). Neighbours are ranked by squared Euclidean distance between the embeddings as the model
outputs them (normalised by its ``model.embedding_norm``), exactly and blockwise over every device, ties to the
lower index: :func:`jaxdml.eval.retrieval.knn`, the search behind the retrieval metrics. With L2-normalised
embeddings the cosine similarity ``1 - d / 2`` is printed too. When the query file is the index itself each item's
own row is left out, as the metrics do. Errors a user can fix are one line (``error: ...``), exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from jaxdml import distributed
from jaxdml.cli import run_user_errors, start_tool
from jaxdml.errors import UserError


@dataclasses.dataclass(frozen=True)
class Index:
    """The arrays of an ``.npz`` written by ``jaxdml.embed``."""

    embeddings: np.ndarray  # (N, D) float32
    paths: np.ndarray  # (N,) str
    labels: np.ndarray | None  # (N,) str, when known
    model: str | None  # "<workdir>:<step>" of the model that made it
    workdir: str | None
    step: int | None
    embedding_norm: str | None
    file: str


def load_index(path: str | Path, key: str = "--index") -> Index:
    """Reads and checks an index file; :class:`UserError` naming ``key`` and the fix when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}={str(path)!r} does not exist; write one with python -m jaxdml.embed --workdir DIR "
                        f"--images PATH --out {path.name if path.suffix == '.npz' else 'embeddings.npz'}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as error:
        raise UserError(f"{key}={str(path)!r} cannot be read as a .npz file ({type(error).__name__}: {error}); write "
                        f"it with python -m jaxdml.embed.") from None
    embeddings = arrays.get("embeddings")
    if embeddings is None or embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise UserError(f"{key}={str(path)!r} holds no (N, D) float array 'embeddings' (it has: "
                        f"{', '.join(arrays) or 'nothing'}); write it with python -m jaxdml.embed.")
    if len(embeddings) == 0:
        raise UserError(f"{key}={str(path)!r} holds no embeddings; embed some images into it first.")
    paths = arrays.get("paths", np.asarray([f"#{i}" for i in range(len(embeddings))]))
    labels = arrays.get("labels")
    if len(paths) != len(embeddings) or (labels is not None and len(labels) != len(embeddings)):
        raise UserError(f"{key}={str(path)!r}: its paths / labels do not have one entry per embedding; write it again "
                        f"with python -m jaxdml.embed.")
    scalars = {k: arrays[k].item() if k in arrays else None for k in ("model", "workdir", "step", "embedding_norm")}
    return Index(embeddings.astype(np.float32), paths.astype(str), None if labels is None else labels.astype(str),
                 file=str(path), **{k: (int(v) if k == "step" and v is not None else v) for k, v in scalars.items()})


@dataclasses.dataclass(frozen=True)
class Neighbours:
    """The ``k`` nearest index items of each query (rows sorted by distance)."""

    query: Index
    distances: np.ndarray  # (Q, k) squared Euclidean
    indices: np.ndarray  # (Q, k) rows of the index
    similarities: np.ndarray | None  # (Q, k) cosine, for L2-normalised embeddings


def search(index: Index, query: Index, k: int, exclude_self: bool = False) -> Neighbours:
    """The ``k`` nearest neighbours in ``index`` of every row of ``query`` (``exclude_self``: ``query`` is
    ``index`` and each row's own entry is left out), by :func:`jaxdml.eval.retrieval.knn`."""
    from jaxdml.eval.retrieval import knn
    from jaxdml.train.state import create_mesh

    d_index, d_query = index.embeddings.shape[1], query.embeddings.shape[1]
    if d_index != d_query:
        raise UserError(f"the query embeddings are {d_query}-d but the index's are {d_index}-d, so they come from "
                        f"different models; embed the index and the queries with the same --workdir and --step.")
    if index.model and query.model and index.model != query.model:
        raise UserError(f"the index was embedded by {index.model} but the queries by {query.model} (workdir:step); "
                        f"distances between two models' embeddings mean nothing: embed both with one model.")
    available = len(index.embeddings) - int(exclude_self)
    if not 1 <= k <= available:
        raise UserError(f"-k {k} must be between 1 and the {available} items of the index "
                        f"({index.file}{', less the query itself' if exclude_self else ''}); use e.g. -k "
                        f"{max(1, min(k, available))}.")
    reference = None if exclude_self else index.embeddings
    distances, indices = knn(query.embeddings, reference, k=k, mesh=create_mesh())
    norm = index.embedding_norm or query.embedding_norm
    similarities = 1.0 - distances / 2.0 if norm == "l2" else None
    return Neighbours(query, distances, indices, similarities)


def _embed_query(path: str, index: Index, workdir: str | None, step: str | None, skip_corrupt: bool) -> Index:
    from jaxdml.embed import embed_images, load_trained

    workdir = workdir or index.workdir
    if workdir is None:
        raise UserError(f"--query={path!r} is an image, but the index {index.file} does not record the model that made "
                        f"it; give the run with --workdir DIR (and --step).")
    same_run = index.step is not None and Path(workdir) == Path(index.workdir or "")
    step = step or (str(index.step) if same_run else "best")
    trained = load_trained(workdir, step)
    arrays = embed_images(trained, path, skip_corrupt=skip_corrupt, key="--query")
    return Index(arrays["embeddings"], arrays["paths"], arrays.get("labels"), trained.identity,
                 str(trained.workdir), trained.step, trained.config.model.embedding_norm, path)


def as_records(result: Neighbours, index: Index) -> list[dict[str, Any]]:
    """One dict per query: its path (and label) and its neighbours' rank, distance, similarity, path, label."""
    out = []
    q = result.query
    for row in range(len(q.embeddings)):
        neighbours = []
        for rank, (d, i) in enumerate(zip(result.distances[row], result.indices[row]), start=1):
            item = {"rank": rank, "distance": float(d), "path": str(index.paths[i]), "index": int(i)}
            if result.similarities is not None:
                item["similarity"] = float(result.similarities[row, rank - 1])
            if index.labels is not None:
                item["label"] = str(index.labels[i])
            neighbours.append(item)
        record = {"query": str(q.paths[row]), "neighbours": neighbours}
        if q.labels is not None:
            record["label"] = str(q.labels[row])
        out.append(record)
    return out


def format_table(records: list[dict[str, Any]]) -> str:
    """The records as text: a heading per query, then one line per neighbour."""
    lines = []
    for n, record in enumerate(records, start=1):
        label = f" (label {record['label']})" if "label" in record else ""
        lines.append(f"query {n}/{len(records)}: {record['query']}{label}")
        has_sim = bool(record["neighbours"]) and "similarity" in record["neighbours"][0]
        has_label = bool(record["neighbours"]) and "label" in record["neighbours"][0]
        head = f"{'rank':>5}  {'distance':>9}" + (f"  {'cosine':>7}" if has_sim else "")
        lines.append(head + ("  label" if has_label else "") + "  path")
        for item in record["neighbours"]:
            line = f"{item['rank']:>5}  {item['distance']:>9.4f}"
            if has_sim:
                line += f"  {item['similarity']:>7.4f}"
            if has_label:
                mark = "" if "label" not in record else (" ✓" if item["label"] == record["label"] else " ✗")
                line += f"  {item['label'] + mark:<5}"
            lines.append(f"{line}  {item['path']}")
    return "\n".join(lines)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run(index_path: str, query_path: str, k: int, *, workdir: str | None = None, step: str | None = None,
        as_json: bool = False, skip_corrupt: bool = False) -> list[dict[str, Any]]:
    """``python -m jaxdml.search`` without the flags: returns the records and prints them (process 0)."""
    index = load_index(index_path)
    exclude_self = False
    if query_path.endswith(".npz"):
        query = load_index(query_path, key="--query")
        exclude_self = _same_file(query_path, index_path)
    else:
        query = _embed_query(query_path, index, workdir, step, skip_corrupt)
    records = as_records(search(index, query, k, exclude_self), index)
    if distributed.is_primary():
        if exclude_self:
            print("note: the query file is the index; each query's own entry is left out", file=sys.stderr)
        print(json.dumps(records, indent=1) if as_json else format_table(records))
    return records


def main(argv: list[str]) -> None:
    start_tool(argv)
    f = flags.FLAGS
    run_user_errors(lambda: run(f.index, f.query, f.k, workdir=f.workdir, step=f.step, as_json=f.json,
                                skip_corrupt=f.skip_corrupt))


def define_flags() -> None:
    """The command's flags (``--workdir``: jaxdml.cli's; the others defined only when it runs)."""
    flags.DEFINE_string("index", None, "The .npz written by python -m jaxdml.embed.")
    flags.DEFINE_string("query", None, "An image, a folder or list of images (embedded with the index's "
                        "model), or a .npz of python -m jaxdml.embed (every row a query).")
    flags.DEFINE_integer("k", 10, "Neighbours per query.")
    flags.DEFINE_string("step", None, "Its checkpoint: best, latest or a number (default: the index's step).")
    flags.DEFINE_bool("json", False, "Print JSON (one object per query) instead of a table.")
    flags.DEFINE_bool("skip_corrupt", False, "Leave out query images that cannot be decoded.")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["index", "query"])
    app.run(main)
