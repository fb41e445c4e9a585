"""Embedding heads: feature map -> pooled vector -> linear embedding -> unit L2 norm."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers import l2_normalize, pool


class EmbeddingHead(nn.Module):
    """Pooling (``gap`` | ``gmp`` | ``gap+gmp``), a linear projection and L2 normalisation.

    Pooling and normalisation run in float32 whatever the compute dtype, so the embeddings that the
    losses and the retrieval metrics see are full precision.
    """

    embedding_dim: int
    pooling: str = "gap"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        pooled = pool(features.astype(jnp.float32), self.pooling)
        embedding = nn.Dense(self.embedding_dim, dtype=self.dtype, name="projection")(pooled.astype(self.dtype))
        return l2_normalize(embedding.astype(jnp.float32))
