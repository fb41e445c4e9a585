"""Embedding heads of the poolings the GSP paper compares with (``model.pooling``): CBAM, CroW, DELF, GeM, GSoP,
NetVLAD, OTP, SOAP and WELDON, as the GSP release builds them (``framework/layers/pooling/*.py``).

Each maps a backbone map (B, H, W, C) to ``{"embedding", "raw_embedding"}`` like :class:`EmbeddingHead`; the math
is in :mod:`jaxdml.layers.pooling_baselines`, the heads own the parameters. Projections are bias-free and
Glorot-uniform, BatchNorm is Keras's (momentum 0.99, epsilon 1e-3), as in the release. Pooling runs in float32
whatever the compute dtype. Settings are ``model.<pooling>.*`` (jaxdml/config.py), the release's defaults.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.layers import (
    crow_pool,
    fill_memory,
    gem_pool,
    global_average_pool,
    k_center_from_memory,
    lipschitz_normalize,
    netvlad_pool,
    otp_pool,
    row_convolution,
    scaled_gram,
    weldon_pool,
)
from jaxdml.models.heads import EMBEDDING_NORMS

glorot = nn.initializers.glorot_uniform()


def _projection(dim: int, dtype: Any) -> nn.Dense:
    """The heads' bias-free Glorot-uniform projection (Keras ``Dense(use_bias=False)``), named ``projection``."""
    return nn.Dense(dim, use_bias=False, kernel_init=glorot, dtype=dtype, name="projection")


def _outputs(raw: jnp.ndarray, embedding_norm: str) -> dict[str, jnp.ndarray]:
    raw = raw.astype(jnp.float32)
    return {"embedding": EMBEDDING_NORMS[embedding_norm](raw), "raw_embedding": raw}


def _grouped_glorot(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jnp.ndarray:
    """Keras's Glorot-uniform for the grouped (1, R) convolution with R groups of F filters: fan-in R, fan-out F R^2."""
    rows, _, filters = shape
    limit = (6.0 / (rows + filters * rows * rows)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


class CBAMHead(nn.Module):
    """CBAM (Woo et al.): channel attention (a shared MLP on the global max and average pools), then spatial
    attention (a ``conv_size`` convolution of the per-location channel max and mean), GAP and a projection.

    As the release: no biases and no BatchNorm in the attention (the paper's spatial gate has BN and a 7x7 kernel).
    """

    embedding_dim: int
    channel_reduction: int = 16
    conv_size: int = 3
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        x = features.astype(jnp.float32)
        c = x.shape[-1]
        hidden = nn.Dense(max(1, c // self.channel_reduction), use_bias=False, kernel_init=glorot, name="channel_mlp_1")
        out = nn.Dense(c, use_bias=False, kernel_init=glorot, name="channel_mlp_2")
        mlp = lambda v: out(nn.relu(hidden(v)))
        x = x * jax.nn.sigmoid(mlp(jnp.max(x, axis=(1, 2))) + mlp(jnp.mean(x, axis=(1, 2))))[:, None, None, :]
        pooled_channels = jnp.stack([jnp.max(x, axis=-1), jnp.mean(x, axis=-1)], axis=-1)
        spatial = nn.Conv(1, (self.conv_size, self.conv_size), padding="SAME", use_bias=False, kernel_init=glorot,
                          name="spatial_conv")(pooled_channels)
        pooled = global_average_pool(x * jax.nn.sigmoid(spatial))
        return _outputs(_projection(self.embedding_dim, self.dtype)(pooled.astype(self.dtype)), self.embedding_norm)


class CroWHead(nn.Module):
    """CroW (Kalantidis et al.): parameter-free spatial and channel weighting of ``relu(x)``, GAP, a projection."""

    embedding_dim: int
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        pooled = crow_pool(features.astype(jnp.float32))
        return _outputs(_projection(self.embedding_dim, self.dtype)(pooled.astype(self.dtype)), self.embedding_norm)


class DELFHead(nn.Module):
    """DELF attention (Noh et al.): a per-location softplus score from a ReLU convolution, score-weighted GAP, a
    projection."""

    embedding_dim: int
    num_filters: int = 512
    conv_size: int = 1
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        x = features.astype(jnp.float32)
        hidden = nn.relu(nn.Conv(self.num_filters, (self.conv_size, self.conv_size), padding="SAME",
                                 kernel_init=glorot, name="attention_conv_1")(x))
        score = nn.softplus(nn.Dense(1, kernel_init=glorot, name="attention_conv_2")(hidden))
        pooled = global_average_pool(score * x)
        return _outputs(_projection(self.embedding_dim, self.dtype)(pooled.astype(self.dtype)), self.embedding_norm)


class GeMHead(nn.Module):
    """GeM (Radenović et al.) over the backbone map, learnable shared power (initially ``power``), a projection."""

    embedding_dim: int
    power: float = 3.0
    learn_power: bool = True
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        p = self.param("power", nn.initializers.constant(self.power), ()) if self.learn_power else self.power
        pooled = gem_pool(features.astype(jnp.float32), p)
        return _outputs(_projection(self.embedding_dim, self.dtype)(pooled.astype(self.dtype)), self.embedding_norm)


class _GSoPBranch(nn.Module):
    """One GSoP attention branch: 1x1 conv + BN + ReLU to ``attention_dim``, uncentred second-order statistics,
    BN, the row-wise convolution (4 filters per row), then a 1x1 conv with a sigmoid to ``out_dim`` gates."""

    attention_dim: int
    out_dim: int
    over_locations: bool  # channel branch: statistics over locations; spatial branch: over channels
    scale: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = nn.Conv(self.attention_dim, (1, 1), name="reduce")(nn.relu(x))
        h = nn.relu(_batch_norm(train, "reduce_bn")(h))
        gram = scaled_gram(h.reshape(h.shape[0], -1, self.attention_dim), self.scale, self.over_locations)
        gram = _batch_norm(train, "gram_bn")(gram)
        rows = gram.shape[-1]
        kernel = self.param("row_conv_kernel", _grouped_glorot, (rows, rows, 4))
        bias = self.param("row_conv_bias", nn.initializers.zeros, (4 * rows,))
        h = row_convolution(gram, kernel, bias)
        if not self.over_locations:
            h = nn.relu(h)
        return jax.nn.sigmoid(nn.Dense(self.out_dim, kernel_init=glorot, name="expand")(h))


class GSoPHead(nn.Module):
    """GSoP (Gao et al.) as the release's head: a projection to D per location, channel gates (from second-order
    statistics over locations) and spatial gates (over channels); the two gated maps are fused by a maximum, then
    GAP. The release's variant: uncentred statistics and no residual (the paper's block is residual)."""

    embedding_dim: int
    attention_dim: int = 128
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        d = self.embedding_dim
        f = _projection(d, self.dtype)(features).astype(jnp.float32)
        b, h, w, _ = f.shape
        n = h * w
        channel = _GSoPBranch(self.attention_dim, d, True, float(n * n), name="channel_attention")(f, train)
        spatial = _GSoPBranch(self.attention_dim, n, False, float(d * d), name="spatial_attention")(f, train)
        fused = jnp.maximum(f * channel[:, None, None, :], nn.relu(f) * spatial.reshape(b, h, w, 1))
        return _outputs(global_average_pool(fused), self.embedding_norm)


class SOAPHead(nn.Module):
    """SOLAR's second-order attention pooling (Ng et al.) as the release's head: softmax self-attention over
    locations (queries and keys: 1x1 conv + BN + ReLU; values: 1x1 conv), a 1x1 conv back to C added to the map,
    then GeM and a projection."""

    embedding_dim: int
    channel_reduction: int = 1
    power: float = 3.0
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        x = features.astype(jnp.float32)
        b, h, w, c = x.shape
        a = max(1, c // self.channel_reduction)
        q = nn.relu(_batch_norm(train, "query_bn")(nn.Conv(a, (1, 1), name="query")(x))).reshape(b, -1, a)
        k = nn.relu(_batch_norm(train, "key_bn")(nn.Conv(a, (1, 1), name="key")(x))).reshape(b, -1, a)
        v = nn.Conv(a, (1, 1), name="value")(x).reshape(b, -1, a)
        attention = jax.nn.softmax(jnp.einsum("bna,bma->bnm", q, k) / jnp.sqrt(float(a)), axis=-1)
        z = nn.Conv(c, (1, 1), name="transform")(jnp.einsum("bnm,bma->bna", attention, v).reshape(b, h, w, a))
        p = self.param("power", nn.initializers.constant(self.power), ())
        pooled = gem_pool(x + z, p)
        return _outputs(_projection(self.embedding_dim, self.dtype)(pooled.astype(self.dtype)), self.embedding_norm)


class NetVLADHead(nn.Module):
    """NetVLAD (Arandjelović et al.): a projection to D / K per location, soft assignment to K learnable centres,
    intra-normalised residual sums concatenated to D."""

    embedding_dim: int
    num_centers: int = 16
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        size = self.embedding_dim // self.num_centers
        f = _projection(size, self.dtype)(features).astype(jnp.float32)
        logits = nn.Dense(self.num_centers, kernel_init=glorot, name="assignment")(f)
        centers = self.param("centers", glorot, (self.num_centers, size), jnp.float32)
        return _outputs(netvlad_pool(f, logits, centers), self.embedding_norm)


class WELDONHead(nn.Module):
    """WELDON (Durand et al.): a projection to D per location, then the sum of the ``k_max`` highest and ``k_min``
    lowest responses of each channel."""

    embedding_dim: int
    k_max: int = 3
    k_min: int = 3
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        del train
        f = _projection(self.embedding_dim, self.dtype)(features).astype(jnp.float32)
        return _outputs(weldon_pool(f, self.k_max, self.k_min), self.embedding_norm)


class OTPHead(nn.Module):
    """Optimal transport pooling (OTK, Mialon et al.) as the release's head: a 1x1 projection to D / K, entropic OT
    (``gamma``, ``iterations`` unrolled Sinkhorn steps) of the locations to K support points, the K transported
    means concatenated to D.

    Like GSP's prototypes, the support starts from greedy k-center over a memory of ``memory_size`` Lipschitz-
    normalised GAP vectors (until it is full the head outputs GAP padded with zeros to D); ``memory_size`` <= K
    transports to the Glorot-initialised support from the start.
    """

    embedding_dim: int
    support_size: int = 64
    memory_size: int = 1024
    gamma: float = 2.0
    iterations: int = 10
    embedding_norm: str = "l2"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        k, d = self.support_size, self.embedding_dim // self.support_size
        x = _projection(d, self.dtype)(features)
        x = x.reshape(x.shape[0], -1, d).astype(jnp.float32)
        support = self.param("support", glorot, (k, d), jnp.float32)
        uses_memory = self.memory_size > k
        ready = self.variable("otp", "ready", lambda: jnp.asarray(not uses_memory))

        def transport() -> jnp.ndarray:
            return otp_pool(x, support, self.gamma, self.iterations)

        def gap() -> jnp.ndarray:
            mean = jnp.mean(x, axis=1)
            return jnp.concatenate([mean, jnp.zeros((x.shape[0], self.embedding_dim - d), mean.dtype)], axis=-1)

        pooled = jax.lax.cond(ready.value, transport, gap)
        if uses_memory:
            memory = self.variable("otp", "memory", jnp.zeros, (self.memory_size, d), jnp.float32)
            count = self.variable("otp", "count", lambda: jnp.zeros((), jnp.int32))
            if train and not self.is_initializing():
                written, counted = fill_memory(memory.value, count.value,
                                               lipschitz_normalize(jax.lax.stop_gradient(jnp.mean(x, axis=1))))
                memory.value = jnp.where(ready.value, memory.value, written)
                count.value = jnp.where(ready.value, count.value, counted)
        return _outputs(pooled, self.embedding_norm)

    def refresh(self) -> None:
        """Once the memory is full, sets the support to its greedy k-center points (once)."""
        if self.memory_size <= self.support_size:
            return
        ready = self.get_variable("otp", "ready")
        start = (self.get_variable("otp", "count") >= self.memory_size) & ~ready
        memory = self.get_variable("otp", "memory")
        current = self.get_variable("params", "support")
        support = jax.lax.cond(start, lambda: k_center_from_memory(memory, self.support_size), lambda: current)
        self.put_variable("params", "support", support)
        self.put_variable("otp", "ready", ready | start)


# model.pooling -> (head, the model.<name> settings section or None); the baselines' one list of names.
POOLING_HEADS: dict[str, tuple[type[nn.Module], str | None]] = {
    "cbam": (CBAMHead, "cbam"), "crow": (CroWHead, None), "delf": (DELFHead, "delf"), "gem": (GeMHead, "gem"),
    "gsop": (GSoPHead, "gsop"), "netvlad": (NetVLADHead, "netvlad"), "otp": (OTPHead, "otp"),
    "soap": (SOAPHead, "soap"), "weldon": (WELDONHead, "weldon"),
}
