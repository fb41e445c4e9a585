"""Names experiment files use for losses and miners (``config.loss.name``, ``config.loss.miner.name``).

A loss is either ``"pair"``-based, ``fn(embeddings, labels, ref_embeddings=None, ref_labels=None, *,
pair_mask=None, **hyper_parameters)``, or ``"proxy"``-based, ``fn(embeddings, labels, params, **hyper_parameters)``
with ``init(rng, num_classes, embedding_dim, **hyper_parameters) -> params`` giving its trainable parameters
(a pair loss may have parameters too, e.g. the margin loss's learnable beta; they are passed as keywords).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax.numpy as jnp

from jaxdml.losses import miners, pair, proxy


@dataclasses.dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., jnp.ndarray]
    kind: Literal["pair", "proxy"]
    init: Callable[..., dict[str, Any]] | None = None
    pml: str = ""  # the pytorch-metric-learning class it is tested against


_PML_PROXY = {"proxy_nca": "ProxyNCALoss", "proxy_nca_pp": "ProxyNCALoss(softmax_scale=1/T)",
              "proxy_anchor": "ProxyAnchorLoss", "soft_triple": "SoftTripleLoss",
              "normalized_softmax": "NormalizedSoftmaxLoss", "cosface": "CosFaceLoss", "arcface": "ArcFaceLoss"}

LOSSES: dict[str, LossSpec] = {
    "contrastive": LossSpec(pair.contrastive_loss, "pair", pml="ContrastiveLoss"),
    "multi_similarity": LossSpec(pair.multi_similarity_loss, "pair", pml="MultiSimilarityLoss"),
    "triplet_margin": LossSpec(pair.triplet_margin_loss, "pair", pml="TripletMarginLoss"),
    "margin": LossSpec(pair.margin_loss, "pair", init=pair.margin_loss_init, pml="MarginLoss"),
    "lifted_structure": LossSpec(pair.lifted_structure_loss, "pair", pml="LiftedStructureLoss"),
    "generalized_lifted_structure": LossSpec(pair.generalized_lifted_structure_loss, "pair",
                                             pml="GeneralizedLiftedStructureLoss"),
    "n_pairs": LossSpec(pair.n_pairs_loss, "pair", pml="NPairsLoss"),
    "circle": LossSpec(pair.circle_loss, "pair", pml="CircleLoss"),
    "supcon": LossSpec(pair.supcon_loss, "pair", pml="SupConLoss"),
    "ntxent": LossSpec(pair.ntxent_loss, "pair", pml="NTXentLoss"),
    **{name: LossSpec(fn, "proxy", init, pml=_PML_PROXY[name]) for name, (fn, init) in proxy.PROXY_LOSSES.items()},
}

MINERS: dict[str, Callable[..., Any]] = miners.MINERS

# Keyword arguments the framework supplies; never hyper-parameters of a config.
_RESERVED = {"pair_mask", "triplets"}


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Available: {sorted(known)}.")


def loss_spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise _unknown("loss", name, LOSSES)
    return LOSSES[name]


def hyper_parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The hyper-parameters of a loss or miner function: its keyword-only parameters, less the framework's."""
    return {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED}


def loss_hyper_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The hyper-parameters ``config.loss.kwargs`` may set for loss ``name`` (with their defaults)."""
    return hyper_parameters(loss_spec(name).fn)


def miner_hyper_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The hyper-parameters ``config.loss.miner.kwargs`` may set for miner ``name`` (with their defaults)."""
    if name not in MINERS:
        raise _unknown("miner", name, MINERS)
    return hyper_parameters(MINERS[name])


def _check(fn: Callable[..., Any], owner: str, kwargs: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    accepted = [name for name in hyper_parameters(fn) if name not in exclude]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{owner} has no hyper-parameter {key!r}.{hint} It accepts: {accepted}.")
    return kwargs


def check_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` if every key is a hyper-parameter of loss ``name``; else an error naming the bad key."""
    return _check(loss_spec(name).fn, f"loss {name!r} (config.loss.kwargs)", kwargs, set())


def make_loss(name: str, kwargs: Mapping[str, Any] | None = None) -> Callable[..., jnp.ndarray]:
    """``LOSSES[name].fn`` with its hyper-parameters bound (clear errors for unknown names and keys)."""
    return functools.partial(loss_spec(name).fn, **check_kwargs(name, dict(kwargs or {})))


def miner_fn(name: str, kwargs: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """``MINERS[name]`` with its hyper-parameters bound."""
    if name not in MINERS:
        raise _unknown("miner", name, MINERS)
    fn = MINERS[name]
    return functools.partial(fn, **_check(fn, f"miner {name!r} (config.loss.miner.kwargs)", dict(kwargs or {}),
                                          set()))
