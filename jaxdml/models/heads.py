"""Embedding heads: feature map (B, H, W, C) -> {"embedding": (B, D), "raw_embedding": (B, D), ...}.

``EmbeddingHead`` (GAP / GMP / GAP+GMP and a linear map), ``GSPHead`` (Generalized Sum Pooling) and ``XBMLHead``
(GAP written as a convex combination of prototypes); the last two also output ``attributes`` (B, K), the input
of the zero-shot / cross-batch losses.

``embedding`` is normalised as ``embedding_norm`` says: ``"l2"`` (unit vectors, MLRC and PML) or ``"lipschitz"``
(``v / max(1, ||v||)``: the GSP/CCP TensorFlow framework's normalisation, used by its losses and its evaluation);
``raw_embedding`` is the vector before it (CCP draws its proxies from these, as the release does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.layers import (
    fill_memory,
    global_average_pool,
    gsp_weights,
    k_center_from_memory,
    l2_normalize,
    lipschitz_normalize,
    pool,
    prototype_assignment,
    prototype_coefficients,
)

# model.embedding_norm -> the normalisation of the heads' output; the one list of valid names.
EMBEDDING_NORMS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {"l2": l2_normalize,
                                                                    "lipschitz": lipschitz_normalize}


class EmbeddingHead(nn.Module):
    """Pooling (``gap`` | ``gmp`` | ``gap+gmp``), a linear projection and normalisation (``embedding_norm``).

    Pooling and normalisation run in float32 whatever the compute dtype, so the embeddings that the
    losses and the retrieval metrics see are full precision.
    """

    embedding_dim: int
    pooling: str = "gap"
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        pooled = pool(features.astype(jnp.float32), self.pooling)
        embedding = nn.Dense(self.embedding_dim, dtype=self.dtype, name="projection")(pooled.astype(self.dtype))
        raw = embedding.astype(jnp.float32)
        return {"embedding": EMBEDDING_NORMS[self.embedding_norm](raw), "raw_embedding": raw}


class GSPHead(nn.Module):
    """1x1 projection (no bias) to D channels -> Generalized Sum Pooling -> unit embedding, plus attributes.

    Prototypes (K, D) are parameters. By default they are initialised as the released TF code does: the
    head returns plain GAP (and zero attributes) while a memory of the ``memory_size`` most recent
    Lipschitz-normalised GAP embeddings fills during training; then :meth:`refresh` (run by the train step after
    each update) sets them to the greedy k-center points of the memory, and GSP takes over. With
    ``memory_size=0`` the prototypes start as ``prototype_init`` gives them (e.g. vectors from a file).
    Variants, as the release (``GeneralizedSumPooling.transport_pool`` / ``gmeanp`` / ``call``):
    ``augment_max_pool`` adds the projection of the backbone map's global max pool; ``gem`` replaces the weighted
    sum by the projection of the generalised mean (learnable p, initially 3) of the backbone map weighted by
    ``N * w`` (the per-location transported mass, mean 1) and clamped at 1e-6. GeM is taken over the backbone's
    non-negative map, before the projection, so embedding coordinates keep their sign.
    """

    embedding_dim: int
    num_prototypes: int = 64
    transport_ratio: float = 0.3
    gamma: float = 5.0
    method: str = "newton"
    memory_size: int = 1024
    augment_max_pool: bool = False
    gem: bool = False
    prototype_init: Callable[..., jnp.ndarray] = nn.initializers.he_normal()
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False, return_plan: bool = False
                 ) -> dict[str, jnp.ndarray]:
        b, d, k = features.shape[0], self.embedding_dim, self.num_prototypes
        projection = nn.Dense(d, use_bias=False, dtype=self.dtype, name="projection")
        projected = projection(features)
        x = projected.reshape(b, -1, d).astype(jnp.float32)  # (B, N, D) local features
        n = x.shape[1]
        prototypes = self.param("prototypes", self.prototype_init, (k, d), jnp.float32)
        power = self.param("gem_power", nn.initializers.constant(3.0), ()) if self.gem else None
        ready = self.variable("gsp", "ready", lambda: jnp.asarray(self.memory_size == 0))
        if self.memory_size:
            memory = self.variable("gsp", "memory", jnp.zeros, (self.memory_size, d), jnp.float32)
            count = self.variable("gsp", "count", lambda: jnp.zeros((), jnp.int32))

        def gsp_branch():
            weights, plan = gsp_weights(x, prototypes, transport_ratio=self.transport_ratio, gamma=self.gamma,
                                        method=self.method)
            if self.gem:  # the release's gmeanp(N w * backbone map), then the projection
                local = features.reshape(b, n, -1).astype(jnp.float32)
                scaled = jnp.maximum(n * weights[..., None] * local, 1e-6)
                mean = jnp.mean(scaled**power, axis=1) ** (1.0 / power)
                pooled = projection(mean.astype(self.dtype)).astype(jnp.float32)
            else:
                pooled = jnp.einsum("bn,bnd->bd", weights, x)
            return pooled, jnp.sum(plan, axis=-1) / self.transport_ratio, plan

        def gap_branch():
            return jnp.mean(x, axis=1), jnp.zeros((b, k), jnp.float32), jnp.zeros((b, k, n), jnp.float32)

        pooled, attributes, plan = jax.lax.cond(ready.value, gsp_branch, gap_branch)
        if self.memory_size and train and not self.is_initializing():
            # Enqueue this batch's Lipschitz-normalised GAP embeddings while the prototypes wait for initialisation.
            gap = lipschitz_normalize(jax.lax.stop_gradient(jnp.mean(x, axis=1)))
            written, counted = fill_memory(memory.value, count.value, gap)
            memory.value = jnp.where(ready.value, memory.value, written)
            count.value = jnp.where(ready.value, count.value, counted)
        if self.augment_max_pool:  # + the projection of the backbone's global max pool
            maximum = jnp.max(features.reshape(b, n, -1), axis=1)
            pooled = pooled + projection(maximum).astype(jnp.float32)
        outputs = {"embedding": EMBEDDING_NORMS[self.embedding_norm](pooled), "raw_embedding": pooled,
                   "attributes": attributes}
        if return_plan:
            outputs["plan"] = plan.reshape((b, k, *features.shape[1:-1]))
        return outputs

    def refresh(self) -> None:
        """Once the memory is full, sets the prototypes to its greedy k-center points (once).

        As the release's ``initialize_support_kernel``: the first K memory entries seed the selection and the K
        prototypes are picked from the entries after them (plain k-center from the first entry when the memory
        holds fewer than 2K)."""
        if not self.memory_size:
            return
        ready = self.get_variable("gsp", "ready")
        start = (self.get_variable("gsp", "count") >= self.memory_size) & ~ready
        memory = self.get_variable("gsp", "memory")
        current = self.get_variable("params", "prototypes")
        prototypes = jax.lax.cond(start, lambda: k_center_from_memory(memory, self.num_prototypes),
                                  lambda: current)
        self.put_variable("params", "prototypes", prototypes)
        self.put_variable("gsp", "ready", ready | start)


class XBMLHead(nn.Module):
    """GAP of a per-location linear map, with its convex coefficients over K learnable prototypes (XBML).

    ``embedding`` is GAP of ``projection(x)``, normalised as ``embedding_norm`` says; ``projection`` holds the same
    parameters as :class:`EmbeddingHead`'s (GAP commutes with the affine map), so with the same parameters the
    embeddings are GAP's for any K. ``attributes`` are the coefficients ``a`` (B, K) of
    :func:`jaxdml.layers.prototype_coefficients`: non-negative, summing to 1, the soft assignment of the
    projected locations to ``prototypes`` (K, D) at ``softmax_scale``; the cross-batch loss
    (``jaxdml.losses.xbml``) trains them. Defaults are the GSP release's ``MetaGlobalPooling`` (K = 32, scale 10,
    Glorot-uniform prototypes); unlike it the projection has a bias, as the GAP head's. With
    ``return_assignment`` the head also returns the assignment maps (B, H, W, K).
    """

    embedding_dim: int
    num_prototypes: int = 32
    softmax_scale: float = 10.0
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False, return_assignment: bool = False
                 ) -> dict[str, jnp.ndarray]:
        del train
        wide = jnp.promote_types(self.dtype, jnp.float32)  # float32 math under bfloat16 compute
        projected = nn.Dense(self.embedding_dim, dtype=self.dtype, name="projection")(features).astype(wide)
        prototypes = self.param("prototypes", nn.initializers.glorot_uniform(),
                                (self.num_prototypes, self.embedding_dim), jnp.float32)
        assignment = prototype_assignment(projected, prototypes, self.softmax_scale)  # (B, N, K)
        raw = global_average_pool(projected)
        outputs = {"embedding": EMBEDDING_NORMS[self.embedding_norm](raw), "raw_embedding": raw,
                   "attributes": prototype_coefficients(assignment)}
        if return_assignment:
            outputs["assignment"] = assignment.reshape((*projected.shape[:-1], self.num_prototypes))
        return outputs
