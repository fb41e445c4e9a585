"""The training objective of a config: a weighted sum of losses, optional miner and cross-batch memory, ZSR / XBML.

``L = sum_t weight_t * L_t`` over the configured terms (``loss.name`` / ``loss.kwargs`` / ``loss.weight`` and any
``loss.extra_terms``); with GSP's zero-shot loss ``total = (1 - zsr.weight) * L + zsr.weight * L_ZSR`` (the
released code's 0.9 / 0.1), with XBML's cross-batch loss ``(1 - xbml.weight) * L + xbml.weight * L_XBML``
(:mod:`jaxdml.losses.xbml`; reading r2 applies the same terms and miner to the re-expressed embeddings).
Pair-based terms see the pairs a miner selects (``loss.miner``) and may use a
cross-batch memory (XBM, Wang et al. 2020): a ring buffer of the last ``xbm.batches`` batches' embeddings, the
current one included, in one of two modes (``loss.xbm.mode``):

* ``pml`` (pytorch-metric-learning's ``CrossBatchMemory``): from step ``xbm.start_step`` on, each term pairs every
  anchor of the batch with every filled memory slot except its own copy, instead of the batch;
* ``release`` (the GSP/CCP TensorFlow release's ``XBMLoss``): each term is ``L(batch, batch) + L(batch, memory)``,
  the memory term counted once the memory has been filled after the start, i.e. from the ``xbm.start_step +
  xbm.batches``-th step (step index ``start_step + batches - 1``), with every slot, the current batch's own copies
  included (as positives at distance 0, which the release's C1 margin of 1 - 1e-5 leaves inactive).

Proxy- and classifier-based terms get their parameters (proxies, class weights) from the
train state, where they are checkpointed and optimised with ``optim.lr_mult.loss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdml.losses import pair, xbml
from jaxdml.losses.registry import LossSpec, check_kwargs, loss_spec, miner_fn
from jaxdml.losses.zsr import zero_shot_loss

# loss.xbm.mode -> what the memory does; the one list of valid names.
XBM_MODES: dict[str, str] = {
    "pml": "batch against the memory (own copies excluded) from xbm.start_step on (PML's CrossBatchMemory)",
    "release": "batch against batch plus batch against the whole memory once filled after xbm.start_step (the "
               "GSP/CCP release)",
}


@dataclasses.dataclass(frozen=True)
class Term:
    name: str  # key of the term (its parameters live under params["loss"][name])
    spec: LossSpec
    kwargs: Mapping[str, Any]
    weight: float


@dataclasses.dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]
    num_classes: int
    embedding_dim: int
    miner: Callable[..., Any] | None = None
    xbm_size: int = 0  # memory slots (batches x batch size); 0 = no memory
    xbm_start_step: int = 0
    xbm_mode: str = "pml"
    zsr_weight: float = 0.0
    zsr_ridge: float = 0.05
    zsr_scale: float = 9.5
    xbml_reading: str = "r1"
    xbml_weight: float = 0.0
    xbml_ridge: float = 0.05
    xbml_scale: float = 9.5
    embedding_norm: str = "l2"  # the heads' normalisation (r2 normalises the re-expressed embeddings so)

    def init(self, rng: jax.Array) -> tuple[dict[str, Any], dict[str, Any]]:
        """(loss parameters, loss state)."""
        params: dict[str, Any] = {}
        rngs = jax.random.split(rng, len(self.terms) + 1)
        for term, key in zip(self.terms, rngs[:-1]):
            if term.spec.init is not None:
                params[term.name] = term.spec.init(key, self.num_classes, self.embedding_dim, **term.kwargs)
        if self.zsr_weight > 0 or (self.xbml_weight > 0 and self.xbml_reading == "r1"):
            params["class_embeddings"] = jax.nn.initializers.he_normal()(
                rngs[-1], (self.num_classes, self.embedding_dim), jnp.float32)
        state: dict[str, Any] = {}
        if self.xbm_size:
            state = {"embeddings": jnp.zeros((self.xbm_size, self.embedding_dim), jnp.float32),
                     "labels": jnp.full((self.xbm_size,), -1, jnp.int32),
                     "position": jnp.zeros((), jnp.int32)}
        return params, state

    def __call__(self, outputs: dict[str, jnp.ndarray], labels: jnp.ndarray, params: dict[str, Any],
                 state: dict[str, Any], step: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, Any], dict[str, Any]]:
        """(loss, new loss state, metrics)."""
        embeddings = outputs["embedding"]
        embeddings = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
        metrics: dict[str, jnp.ndarray] = {}
        if self.xbm_size:
            state, memory_mask = self._enqueue(state, embeddings, labels)
        total = jnp.zeros((), embeddings.dtype)
        for term in self.terms:
            term_params = params.get(term.name, {})
            if term.spec.kind == "proxy" or not self.xbm_size:
                value = self._term(term, term_params, embeddings, labels)
            elif self.xbm_mode == "release":
                filled = self.xbm_start_step + self.xbm_size // embeddings.shape[0] - 1
                every_slot = jnp.broadcast_to((state["labels"] >= 0)[None, :], memory_mask.shape)
                memory_value = jax.lax.cond(
                    step >= filled,
                    lambda t=term, p=term_params, m=every_slot: self._pair_term(
                        t, p, embeddings, labels, state["embeddings"], state["labels"], m),
                    lambda: jnp.zeros((), embeddings.dtype))
                value = self._pair_term(term, term_params, embeddings, labels) + memory_value
            else:
                value = jax.lax.cond(
                    step >= self.xbm_start_step,
                    lambda t=term, p=term_params: self._pair_term(t, p, embeddings, labels, state["embeddings"],
                                                                  state["labels"], memory_mask),
                    lambda t=term, p=term_params: self._pair_term(t, p, embeddings, labels))
            total = total + term.weight * value
            if len(self.terms) > 1:
                metrics[f"{term.name}_loss"] = value
        loss = total
        if self.zsr_weight > 0:
            if "attributes" not in outputs:
                raise ValueError("loss.zsr.weight > 0 needs a head that outputs attributes (model.pooling='gsp')")
            zsr = zero_shot_loss(outputs["attributes"], labels, params["class_embeddings"],
                                 ridge=self.zsr_ridge, scale=self.zsr_scale)
            loss = (1.0 - self.zsr_weight) * total + self.zsr_weight * zsr
            metrics.update(dml_loss=total, zsr_loss=zsr)
        if self.xbml_weight > 0:
            if "attributes" not in outputs:
                raise ValueError("loss.xbml.weight > 0 needs a head that outputs attributes (model.pooling='xbml')")
            cross = self._cross_batch(outputs, labels, params)
            loss = (1.0 - self.xbml_weight) * total + self.xbml_weight * cross
            metrics.update(dml_loss=total, xbml_loss=cross)
        return loss, state, metrics

    def _cross_batch(self, outputs: dict[str, jnp.ndarray], labels: jnp.ndarray, params: dict[str, Any]
                     ) -> jnp.ndarray:
        """XBML's loss on the head's coefficients, in the configured reading."""
        coefficients = outputs["attributes"]
        if self.xbml_reading == "r1":
            return xbml.zero_shot_loss(coefficients, labels, params["class_embeddings"], ridge=self.xbml_ridge,
                                       scale=self.xbml_scale)

        def terms_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, pair_mask: jnp.ndarray) -> jnp.ndarray:
            return sum(term.weight * self._term(term, params.get(term.name, {}), embeddings, labels, pair_mask)
                       for term in self.terms)

        raw = outputs["raw_embedding"]
        return xbml.reexpressed_loss(terms_loss, coefficients, raw.astype(jnp.promote_types(raw.dtype, jnp.float32)),
                                     labels, ridge=self.xbml_ridge, normalize=self.embedding_norm)

    def _term(self, term: Term, term_params: dict[str, Any], embeddings: jnp.ndarray, labels: jnp.ndarray,
              pair_mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """One term on the batch alone (proxy terms ignore ``pair_mask``)."""
        if term.spec.kind == "proxy":
            return term.spec.fn(embeddings, labels, term_params, **term.kwargs)
        return self._pair_term(term, term_params, embeddings, labels, pair_mask=pair_mask)

    def _pair_term(self, term: Term, term_params: dict[str, Any], embeddings: jnp.ndarray, labels: jnp.ndarray,
                   ref_embeddings: jnp.ndarray | None = None, ref_labels: jnp.ndarray | None = None,
                   pair_mask: jnp.ndarray | None = None) -> jnp.ndarray:
        kwargs = dict(term.kwargs)
        if self.miner is not None:
            # Mine among the pairs that exist (filled memory slots, no self pairs), as PML's CrossBatchMemory.
            mined = self.miner(jax.lax.stop_gradient(embeddings), labels,
                               None if ref_embeddings is None else jax.lax.stop_gradient(ref_embeddings),
                               ref_labels, pair_mask=pair_mask)
            if isinstance(mined, jnp.ndarray):  # a pair mask
                pair_mask = mined if pair_mask is None else pair_mask & mined
            else:  # a lazy triplet selection, for triplet losses
                kwargs["triplets"] = mined
        # Trainable parameters passed by keyword (e.g. the margin loss's beta) override their configured start.
        return term.spec.fn(embeddings, labels, ref_embeddings, ref_labels, pair_mask=pair_mask,
                            **{**kwargs, **term_params})

    def _enqueue(self, state: dict[str, Any], embeddings: jnp.ndarray, labels: jnp.ndarray
                 ) -> tuple[dict[str, Any], jnp.ndarray]:
        """Writes the batch at the ring position; returns the new state and the (B, M) valid-pair mask."""
        batch = embeddings.shape[0]
        position = state["position"]
        new_state = {
            "embeddings": jax.lax.dynamic_update_slice(state["embeddings"], jax.lax.stop_gradient(embeddings),
                                                       (position, jnp.zeros_like(position))),
            "labels": jax.lax.dynamic_update_slice(state["labels"], labels.astype(jnp.int32), (position,)),
            "position": (position + batch) % self.xbm_size,
        }
        slots = jnp.arange(self.xbm_size)
        is_self = slots[None, :] == (position + jnp.arange(batch))[:, None]
        return new_state, (new_state["labels"] >= 0)[None, :] & ~is_self


def _term(name: str, loss_name: str, kwargs: Mapping[str, Any], weight: float) -> Term:
    return Term(name, loss_spec(loss_name), check_kwargs(loss_name, dict(kwargs)), float(weight))


def make_objective(cfg: ml_collections.ConfigDict, *, num_classes: int, embedding_dim: int,
                   batch_size: int, embedding_norm: str = "l2") -> Objective:
    """The objective described by the ``loss`` section of a config (``embedding_norm``: ``model.embedding_norm``)."""
    if cfg.xbm.batches < 0 or not 0.0 <= cfg.zsr.weight < 1.0 or not 0.0 <= cfg.xbml.weight < 1.0:
        raise ValueError(f"loss.xbm.batches must be >= 0 and loss.zsr.weight, loss.xbml.weight in [0, 1); got "
                         f"{cfg.xbm.batches}, {cfg.zsr.weight}, {cfg.xbml.weight}")
    if cfg.xbml.reading not in xbml.READINGS:
        raise ValueError(f"loss.xbml.reading must be one of {sorted(xbml.READINGS)}; got {cfg.xbml.reading!r}")
    if cfg.zsr.weight > 0 and cfg.xbml.weight > 0:
        raise ValueError("loss.zsr.weight and loss.xbml.weight cannot both be > 0 (both read the head's attributes)")
    terms = [_term(cfg.name, cfg.name, cfg.kwargs.to_dict(), cfg.weight)]
    for key, extra in cfg.extra_terms.items():
        unknown = set(extra) - {"name", "kwargs", "weight"}
        if unknown or "name" not in extra:
            raise ValueError(f"loss.extra_terms.{key} must have keys name, kwargs (optional), weight (optional); "
                             f"got {sorted(extra)}")
        terms.append(_term(key, extra["name"], dict(extra.get("kwargs", {})), extra.get("weight", 1.0)))
    if len({t.name for t in terms}) != len(terms):
        raise ValueError(f"loss terms need distinct names; got {[t.name for t in terms]}")
    if cfg.xbm.batches:
        for term in terms:
            if term.spec.fn is pair.n_pairs_loss or (term.spec.fn is pair.triplet_margin_loss
                                                     and term.kwargs.get("swap")):
                raise ValueError(f"loss term {term.name!r} cannot use a cross-batch memory (n-pairs and triplet "
                                 f"swap need the batch as reference); set loss.xbm.batches=0.")
    if cfg.xbm.mode not in XBM_MODES:
        raise ValueError(f"loss.xbm.mode must be one of {sorted(XBM_MODES)}; got {cfg.xbm.mode!r}")
    miner = miner_fn(cfg.miner.name, cfg.miner.kwargs.to_dict()) if cfg.miner.name else None
    return Objective(tuple(terms), num_classes, embedding_dim, miner=miner, xbm_size=cfg.xbm.batches * batch_size,
                     xbm_start_step=cfg.xbm.start_step, xbm_mode=cfg.xbm.mode, zsr_weight=cfg.zsr.weight,
                     zsr_ridge=cfg.zsr.ridge, zsr_scale=cfg.zsr.scale, xbml_reading=cfg.xbml.reading,
                     xbml_weight=cfg.xbml.weight, xbml_ridge=cfg.xbml.ridge, xbml_scale=cfg.xbml.scale,
                     embedding_norm=embedding_norm)
