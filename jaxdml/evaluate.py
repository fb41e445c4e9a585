"""Evaluates a run's checkpoint again, without training: on its test set, another split, or another dataset.

    python -m jaxdml.evaluate --workdir runs/digit_pairs                        # the newest checkpoint, test set
    python -m jaxdml.evaluate --workdir runs/digit_pairs --step best --split train --picture
    python -m jaxdml.evaluate --workdir runs/digit_pairs --config.data.name=digit_collage

The model is the one the run trained (its ``config.json`` and checkpoint); only ``data.*`` and ``eval.*`` keys
may be overridden, and the evaluation is the trainers' own (:mod:`jaxdml.eval.evaluators`: retrieval metrics for
embedding runs, accuracy for classifiers), so the same step on the same split gives the run's own numbers. The
metrics are printed and saved to ``<workdir>/evaluations/<name>.json`` (``--picture``: the retrieval picture next
to it, ``<name>.png``); nothing else in the workdir changes. A workdir of the MLRC fold protocol (``data.folds``)
is evaluated as the protocol does: every fold's model (default: its best checkpoint) alone and the concatenation.

To restore a run's model for inference in Python (no dataset needed), use :func:`jaxdml.embed.load_trained`;
the config reading and the ``--step`` resolution here are that module's (:func:`jaxdml.embed.load_run_config`,
:func:`jaxdml.embed.resolve_step`).
"""

from __future__ import annotations

import ast
import copy
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags, logging

from jaxdml.cli import WORKDIR, initialize_distributed, run_user_errors
from jaxdml.config import check_overrides, validate
from jaxdml.errors import ConfigError, UserError

EVALUATIONS = "evaluations"
# data and eval keys that are part of what the run is, not of how it is evaluated.
FIXED_KEYS = {"data.folds": "the fold protocol is the run's; evaluate one model with --workdir <workdir>/fold_<k>",
              "data.fold": "evaluate one model with --workdir <workdir>/fold_<k>",
              "eval.evaluator": "the evaluator follows the run's trainer (retrieval or accuracy)"}


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir`` (:func:`jaxdml.embed.load_run_config`), resolved and validated."""
    from jaxdml.embed import load_run_config
    from jaxdml.trainers import resolve_config

    return resolve_config(load_run_config(workdir))[0]


def restore_run(workdir: str | Path, step: str, cfg: ml_collections.ConfigDict) -> tuple[Any, Any, int]:
    """(trainer built for inference, with the run's data and evaluator; restored state; step) of the run in
    ``workdir`` at ``step`` (default latest); close the trainer."""
    from jaxdml.embed import resolve_step
    from jaxdml.trainers import TRAINERS

    trainer = TRAINERS[cfg.trainer].for_inference(cfg, workdir)
    try:
        number = resolve_step(trainer.checkpointer, step or "latest", trainer.workdir)
        return trainer, trainer.restore(number), number
    except BaseException:
        trainer.close()
        raise


def _parse_value(key: str, text: str, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{key}={text}: expected a value like {current!r}.") from None
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key}: set its keys one by one (--config.{key}.<name>=...).")
    return text


def with_overrides(cfg: ml_collections.ConfigDict, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """``cfg`` with the ``(key, text)`` overrides applied, validated; only ``data.*`` and ``eval.*`` keys (those
    that do not change the model) may change."""
    out = copy.deepcopy(cfg)
    for key, text in overrides:
        check_overrides(cfg, [f"--config.{key}"])  # unknown key: named, with the closest ones
        if key.split(".")[0] not in ("data", "eval"):
            raise ConfigError(f"--config.{key} would change the model; evaluate restores the model the run trained, "
                              f"so only data.* and eval.* keys may be overridden (train another run for another "
                              f"model, e.g. with --fork_from).")
        if key in FIXED_KEYS:
            raise ConfigError(f"--config.{key} cannot be overridden: {FIXED_KEYS[key]}.")
        *parents, name = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        with out.unlocked():
            node[name] = _parse_value(key, text, node[name])
    return validate(out)


def _sources(data: Any, split: str, workdir: Path) -> tuple[Any, Any]:
    if split == "test":
        return data.query, data.reference
    source = data.val if split == "val" else data.train
    if source is None:
        raise UserError(f"--split=val: the run in {workdir} holds out no validation classes (data.val_fraction=0, no "
                        f"data.folds); use --split test or train, or set --config.data.val_fraction.")
    return source, None


def _evaluator(trainer: Any, cfg: ml_collections.ConfigDict, picture: bool) -> Any:
    """The run's evaluator under the evaluation config (the trainer's own when nothing changed)."""
    from jaxdml.eval import EVALUATORS

    kind = EVALUATORS[cfg.eval.evaluator]
    evaluator = kind(cfg, trainer.setup.predict(kind.output), trainer.mesh)
    if picture and not (cfg.eval.pictures and cfg.eval.evaluator == "retrieval"):
        raise ConfigError("--picture shows retrieval; it needs eval.pictures > 0 and a retrieval run.")
    evaluator.keep_outputs = picture
    return evaluator


def _data(trainer: Any, cfg: ml_collections.ConfigDict) -> Any:
    from jaxdml.data.datasets import load_data

    return trainer.data if cfg.data.to_dict() == trainer.cfg.data.to_dict() else load_data(cfg.data)


def evaluate_run(workdir: str | Path, *, step: str = "", split: str = "test",
                 overrides: Sequence[tuple[str, str]] = (), picture: bool = False, name: str | None = None
                 ) -> dict[str, Any]:
    """Evaluates the run in ``workdir`` (or, for a fold-protocol workdir, its folds and their concatenation) and
    saves the result in ``<workdir>/evaluations/<name>.json``; returns it. See the module docstring."""
    from jaxdml.trainers.folds import fold_workdir

    workdir = Path(workdir)
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise UserError(f"--name={name}: give a plain file name (no directories).")
    if not (workdir / "config.json").exists() and fold_workdir(workdir, 0).is_dir():
        return _evaluate_folds(workdir, step or "best", split, list(overrides), picture, name)
    run_cfg = run_config(workdir)
    cfg = with_overrides(run_cfg, list(overrides))
    trainer, state, number = restore_run(workdir, step, run_cfg)
    try:
        query, reference = _sources(_data(trainer, cfg), split, workdir)
        evaluator = _evaluator(trainer, cfg, picture)
        metrics = evaluator(state, query, reference)
        drawn = evaluator.picture() if picture else None
    finally:
        trainer.close()
    name = name or f"{cfg.data.name}_{split}_step{number}"
    result = {"step": number, "metrics": metrics}
    return save_evaluation(workdir, name, result, cfg, split, overrides, drawn,
                           f"step {number} ({cfg.data.name} {split})")


def _evaluate_folds(workdir: Path, step: str, split: str, overrides: list[tuple[str, str]], picture: bool,
                    name: str | None) -> dict[str, Any]:
    """Every fold's model on the test set, alone and concatenated, as :meth:`FoldProtocol.evaluate` does."""
    from jaxdml.eval.evaluators import Outputs
    from jaxdml.trainers.folds import concatenated_outputs, fold_workdir, summarize

    if split != "test":
        raise UserError(f"--split={split}: each fold's model was selected on its own held-out fold, so the models "
                        f"are evaluated together only on the test set; evaluate one model with --workdir "
                        f"{fold_workdir(workdir, 0)} (fold_<k>) --split={split}.")
    first = run_config(fold_workdir(workdir, 0))
    folds, queries, references = [], [], []
    evaluator = None
    for fold in range(first.data.folds):
        run_cfg = run_config(fold_workdir(workdir, fold))
        cfg = with_overrides(run_cfg, overrides)
        trainer, state, number = restore_run(fold_workdir(workdir, fold), step, run_cfg)
        try:
            data = _data(trainer, cfg)
            evaluator = _evaluator(trainer, cfg, picture)
            q = evaluator.outputs(state, data.query)
            r = evaluator.outputs(state, data.reference) if data.reference is not None else None
            folds.append({"step": number, "metrics": evaluator.score(q, r)})
            queries.append(q)
            references.append(r)
        finally:
            trainer.close()
    mean, std = summarize([f["metrics"] for f in folds])
    norm = first.model.embedding_norm
    q: Outputs = concatenated_outputs(queries, norm)
    r = None if references[0] is None else concatenated_outputs(references, norm)
    concatenated = evaluator.score(q, r)
    drawn = None
    if picture:
        evaluator.last = (data.query, q, data.reference, r)
        drawn = evaluator.picture()
    dim = first.model.embedding_dim
    for fold, f in enumerate(folds):
        _echo(f"fold {fold} (step {f['step']}): {_format(f['metrics'])}")
    _echo(f"mean of the {len(folds)} models: {_format(mean)}")
    name = name or f"{cfg.data.name}_{split}_{step if not step.isdigit() else 'step' + step}"
    result = {"folds": folds, "mean": mean, "std": std, "metrics": concatenated, "embedding_dim": dim,
              "concatenated_dim": dim * len(folds)}
    return save_evaluation(workdir, name, result, cfg, split, overrides, drawn,
                           f"concatenated ({dim * len(folds)}-d, {cfg.data.name} {split})")


def _format(metrics: dict[str, float]) -> str:
    from jaxdml.train.hooks import format_metrics

    return format_metrics(metrics)


def _echo(message: str) -> None:
    from jaxdml import distributed

    if distributed.is_primary():
        print(message, flush=True)


def save_evaluation(workdir: Path, name: str, result: dict[str, Any], cfg: ml_collections.ConfigDict, split: str,
                    overrides: Sequence[tuple[str, str]], drawn: Any, title: str) -> dict[str, Any]:
    """Prints ``title: <metrics>`` and (process 0) writes ``result`` with the run's identity to
    ``<workdir>/evaluations/<name>.json`` (atomically; ``drawn``: a picture saved next to it); returns it."""
    from jaxdml import distributed
    from jaxdml.eval.pictures import save_png

    directory = workdir / EVALUATIONS
    result = {"workdir": str(workdir.absolute()), "split": split, "dataset": cfg.data.name,
              "overrides": dict(overrides), **result,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _echo(f"{title}: {_format(result['metrics'])}")
    if distributed.is_primary():
        directory.mkdir(parents=True, exist_ok=True)
        if drawn is not None:
            result["picture"] = str(save_png(drawn[0], directory / f"{name}.png"))
            _echo(f"picture: {result['picture']}")
        path = directory / f"{name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
        _echo(f"saved {path}")
    return result


_OVERRIDES: list[tuple[str, str]] = []


def parse_flags(argv: list[str]) -> list[str]:
    """Sets the ``--config.<key>=<value>`` overrides aside (applied to the run's config by :func:`main`), then
    parses the other flags; exit 2 on bad flags."""
    rest, args = [], iter(argv)
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        key, sep, text = arg[len("--config."):].partition("=")
        if not sep:
            text = next(args, None)
            if text is None:
                print(f"error: {arg} needs a value: {arg}=VALUE.", file=sys.stderr)
                sys.exit(2)
        _OVERRIDES.append((key, text))
    try:
        return flags.FLAGS(rest)
    except flags.Error as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    run_user_errors(initialize_distributed)
    f = flags.FLAGS
    run_user_errors(lambda: evaluate_run(WORKDIR.value, step=f.step, split=f.split, overrides=_OVERRIDES,
                                         picture=f.picture, name=f.name))


def define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing this module, as the probe does, defines
    none)."""
    flags.DEFINE_string("step", "", "Checkpoint to evaluate: a step number, best (the best evaluation's) or latest. "
                        "Default: latest; with data.folds each fold's best, as the protocol reports.")
    flags.DEFINE_enum("split", "test", ["test", "val", "train"], "test: the test set as the trainer evaluates it "
                      "(query vs reference); val: the held-out training classes; train: the training classes.")
    flags.DEFINE_bool("picture", False, "Also save the retrieval picture (eval.pictures queries with their "
                      "eval.picture_k neighbours) as evaluations/<name>.png.")
    flags.DEFINE_string("name", None, "File name (without .json) in <workdir>/evaluations; default "
                        "<data.name>_<split>_<step>.")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(main, flags_parser=parse_flags)
