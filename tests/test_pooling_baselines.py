"""The poolings GSP is compared with, against independent transcriptions of their published implementations
(PyTorch / NumPy, in this file) with the GSP release's settings, and closed forms on small cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxdml.config import ConfigError, default_config, validate
from jaxdml.layers import crow_pool, gem_pool, netvlad_pool, otp_pool, sinkhorn_plan, weldon_pool
from jaxdml.models import CBAMHead, DELFHead, GSoPHead, OTPHead, SOAPHead, build_model

RNG = np.random.default_rng(0)


def t(a):
    return torch.tensor(np.asarray(a, np.float64))


def nchw(x):
    return t(x).permute(0, 3, 1, 2)


def conv_weight(kernel):
    """Flax conv kernel (kh, kw, in, out) or Dense kernel (in, out) -> torch conv weight (out, in, kh, kw)."""
    k = np.asarray(kernel)
    k = k[None, None] if k.ndim == 2 else k
    return t(k).permute(3, 2, 0, 1)


def test_gem_matches_cnnimageretrieval_pytorch_and_its_gradient_in_p():
    x = RNG.normal(size=(3, 5, 4, 6)).astype(np.float32)
    # cnnimageretrieval-pytorch (Radenović et al.), cirtorch/layers/functional.py: gem
    xt, p = nchw(x), torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ref = F.avg_pool2d(xt.clamp(min=1e-6).pow(p), (xt.size(-2), xt.size(-1))).pow(1.0 / p).flatten(1)
    ref.sum().backward()
    _, grad = jax.value_and_grad(lambda q: gem_pool(jnp.asarray(x), q).sum())(3.0)
    np.testing.assert_allclose(np.asarray(gem_pool(jnp.asarray(x), 3.0)), ref.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(float(grad), float(p.grad), rtol=1e-4)
    # p = 1 is GAP of the clamped map; the power mean grows with p towards GMP.
    clamped = np.maximum(x, 1e-6)
    np.testing.assert_allclose(np.asarray(gem_pool(jnp.asarray(x), 1.0)), clamped.mean((1, 2)), rtol=1e-5)
    means = [np.asarray(gem_pool(jnp.asarray(x), q)) for q in (1.0, 3.0, 8.0)]
    assert np.all(means[0] <= means[1] + 1e-6) and np.all(means[1] <= means[2] + 1e-6)
    assert np.all(means[2] <= clamped.max((1, 2)) + 1e-6)


def test_crow_matches_the_authors_numpy_spatial_weight_and_the_release_channel_weight():
    x = np.maximum(RNG.normal(size=(2, 4, 5, 7)), 0).astype(np.float32)
    pooled = np.asarray(crow_pool(jnp.asarray(x)))
    for i in range(2):
        X = x[i].transpose(2, 0, 1).astype(np.float64)  # (K, H, W) as yahoo/crow's crow.py
        # crow.py: compute_crow_spatial_weight(X, a=2, b=2)
        S = X.sum(axis=0)
        z = (S**2).sum() ** 0.5
        spatial = (S / z) ** 0.5
        # The release's channel weight (framework/layers/pooling/crow.py): log((K eps + sum q) / (eps + q)),
        # q = mean of sigmoid(X) over locations.
        q = (1 / (1 + np.exp(-X))).mean(axis=(1, 2))
        channel = np.log((X.shape[0] * 1e-16 + q.sum()) / (1e-16 + q))
        expected = (X * spatial[None] * channel[:, None, None]).mean(axis=(1, 2))
        np.testing.assert_allclose(pooled[i], expected, rtol=1e-5)


def test_weldon_is_the_sum_of_top_and_bottom_k_responses():
    x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    # WELDON (weldon.resnet.pytorch's WeldonPool2d sorts each channel and averages its k highest and k lowest
    # responses); the GSP release sums them (the same up to a factor k before normalisation).
    s = torch.sort(nchw(x).flatten(2), dim=2, descending=True)[0]
    expected = s[:, :, :3].sum(2) + s[:, :, -2:].sum(2)
    np.testing.assert_allclose(np.asarray(weldon_pool(jnp.asarray(x), 3, 2)), expected.numpy(), rtol=1e-5)


def test_netvlad_matches_pytorch_netvlad():
    b, h, w, d, k = 2, 3, 4, 5, 6
    x = RNG.normal(size=(b, h, w, d)).astype(np.float32)
    weight, bias = RNG.normal(size=(d, k)).astype(np.float32), RNG.normal(size=(k,)).astype(np.float32)
    centers = RNG.normal(size=(k, d)).astype(np.float32)
    # Nanne/pytorch-NetVlad, netvlad.py: NetVLAD.forward (without its input and output normalisation)
    xt = nchw(x)
    soft_assign = F.conv2d(xt, conv_weight(weight), t(bias)).view(b, k, -1)
    soft_assign = F.softmax(soft_assign, dim=1)
    x_flatten = xt.view(b, d, -1)
    vlad = torch.zeros([b, k, d], dtype=torch.float64)
    for c in range(k):
        residual = x_flatten.unsqueeze(0).permute(1, 0, 2, 3) - t(centers)[c:c + 1, :].expand(
            x_flatten.size(-1), -1, -1).permute(1, 2, 0).unsqueeze(0)
        residual *= soft_assign[:, c:c + 1, :].unsqueeze(2)
        vlad[:, c:c + 1, :] = residual.sum(dim=-1)
    vlad = F.normalize(vlad, p=2, dim=2).view(b, -1)
    ours = netvlad_pool(jnp.asarray(x), jnp.asarray(x) @ weight + bias, jnp.asarray(centers))
    np.testing.assert_allclose(np.asarray(ours), vlad.numpy(), rtol=1e-4, atol=1e-6)


def release_sinkhorn(c, gamma, iterations):
    """The GSP release's OptimalTransport.optimal_transport, in NumPy."""
    eps = np.finfo(np.float32).eps
    K = np.exp(-gamma * c)
    q, p = np.full((1, 1, c.shape[2]), 1 / c.shape[2]), np.full((1, 1, c.shape[1]), 1 / c.shape[1])
    u = np.ones_like(p)
    for _ in range(iterations):
        v = q / (u @ K + eps)
        u = p / (v @ np.swapaxes(K, 1, 2) + eps)
    v = q / (u @ K + eps)
    return np.swapaxes(u, 1, 2) * K * v


def test_sinkhorn_plan_matches_the_release_loop_and_converges_to_ott_jax():
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    cost = RNG.uniform(0, 2, size=(2, 4, 9)).astype(np.float32)
    plan = np.asarray(sinkhorn_plan(jnp.asarray(cost), 2.0, 10))
    np.testing.assert_allclose(plan, release_sinkhorn(cost.astype(np.float64), 2.0, 10), rtol=1e-5)
    converged = np.asarray(sinkhorn_plan(jnp.asarray(cost), 2.0, 500))
    for i in range(2):
        out = sinkhorn.Sinkhorn(threshold=1e-9, max_iterations=5000)(
            linear_problem.LinearProblem(geometry.Geometry(cost_matrix=jnp.asarray(cost[i]), epsilon=0.5)))
        np.testing.assert_allclose(converged[i], np.asarray(out.matrix), atol=1e-6)
    np.testing.assert_allclose(converged.sum(-1), 1 / 4, rtol=1e-5)  # the support's uniform marginal


def test_otp_pool_concatenates_the_transported_means():
    x = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    support = RNG.normal(size=(5, 4)).astype(np.float32)
    locs = x.reshape(2, 9, 4)
    lip = lambda v: v / np.maximum(1, np.linalg.norm(v, axis=-1, keepdims=True))
    cost = np.linalg.norm(lip(support)[None, :, None] - lip(locs)[:, None], axis=-1)
    plan = release_sinkhorn(cost, 2.0, 10)
    expected = np.sqrt(5) * (plan @ locs).reshape(2, -1)
    np.testing.assert_allclose(np.asarray(otp_pool(jnp.asarray(x), jnp.asarray(support))), expected, rtol=1e-4,
                               atol=1e-6)


def test_cbam_head_matches_the_authors_pytorch_gates_with_the_release_settings():
    x = RNG.normal(size=(2, 5, 5, 32)).astype(np.float32)
    head = CBAMHead(embedding_dim=8, channel_reduction=4, conv_size=3, embedding_norm="l2")
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]
    out = head.apply(variables, jnp.asarray(x))
    # Jongchan/attention-module, MODELS/cbam.py: ChannelGate (avg + max paths through one MLP, sigmoid) and
    # SpatialGate (ChannelPool = cat(max, mean) over channels, conv, sigmoid) -- with the release's 3x3 kernel and
    # no bias or BatchNorm.
    xt = nchw(x)
    mlp = lambda v: F.relu(v @ t(p["channel_mlp_1"]["kernel"])) @ t(p["channel_mlp_2"]["kernel"])
    att = mlp(F.avg_pool2d(xt, (5, 5)).flatten(1)) + mlp(F.max_pool2d(xt, (5, 5)).flatten(1))
    xt = xt * torch.sigmoid(att)[:, :, None, None]
    pooled = torch.cat((torch.max(xt, 1)[0].unsqueeze(1), torch.mean(xt, 1).unsqueeze(1)), dim=1)
    xt = xt * torch.sigmoid(F.conv2d(pooled, conv_weight(p["spatial_conv"]["kernel"]), padding=1))
    raw = xt.mean((2, 3)) @ t(p["projection"]["kernel"])
    np.testing.assert_allclose(np.asarray(out["raw_embedding"]), raw.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["embedding"]), F.normalize(raw).numpy(), rtol=1e-4, atol=1e-6)


def test_delf_head_matches_a_pytorch_transcription():
    x = RNG.normal(size=(2, 4, 4, 6)).astype(np.float32)
    head = DELFHead(embedding_dim=5, num_filters=7)
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]
    xt = nchw(x)
    # DELF's attention (tensorflow/models delf: conv 1x1 + ReLU, conv 1x1 to one channel, softplus).
    hidden = F.relu(F.conv2d(xt, conv_weight(p["attention_conv_1"]["kernel"]), t(p["attention_conv_1"]["bias"])))
    score = F.softplus(F.conv2d(hidden, conv_weight(p["attention_conv_2"]["kernel"]), t(p["attention_conv_2"]["bias"])))
    raw = (score * xt).mean((2, 3)) @ t(p["projection"]["kernel"])
    np.testing.assert_allclose(np.asarray(head.apply(variables, jnp.asarray(x))["raw_embedding"]), raw.numpy(),
                               rtol=1e-4, atol=1e-6)


def torch_bn(x, channel_axis=1):
    """Training-mode BatchNorm (batch statistics, biased variance, Keras's epsilon 1e-3), at its initial affine."""
    dims = [i for i in range(x.dim()) if i != channel_axis]
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-3)


def test_gsop_head_matches_a_pytorch_transcription_of_the_release():
    b, h, w, c, d, a = 3, 3, 3, 6, 8, 5
    n = h * w
    x = RNG.normal(size=(b, h, w, c)).astype(np.float32)
    head = GSoPHead(embedding_dim=d, attention_dim=a)
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]
    out, _ = head.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])

    def branch(f, q, rows, over_locations, scale):
        y = F.relu(torch_bn(F.conv2d(F.relu(f), conv_weight(q["reduce"]["kernel"]), t(q["reduce"]["bias"]))))
        y = y.flatten(2).transpose(1, 2)  # (b, n, a)
        gram = (y.transpose(1, 2) @ y if over_locations else y @ y.transpose(1, 2)) / scale
        gram = torch_bn(gram.unsqueeze(1), channel_axis=3).permute(0, 3, 1, 2)  # NHWC (b, 1, i, c) -> NCHW
        # The release's Conv2D(4 rows, kernel (1, rows), groups=rows) on the (b, 1, rows, rows) map.
        weight = t(q["row_conv_kernel"]).permute(1, 2, 0).reshape(4 * rows, 1, 1, rows)
        y = F.conv2d(gram, weight, t(q["row_conv_bias"]), groups=rows).flatten(1)
        if not over_locations:
            y = F.relu(y)
        return torch.sigmoid(y @ t(q["expand"]["kernel"]) + t(q["expand"]["bias"]))

    f = (t(x) @ t(p["projection"]["kernel"])).permute(0, 3, 1, 2)  # (b, d, h, w)
    channel = branch(f, p["channel_attention"], a, True, n * n)
    spatial = branch(f, p["spatial_attention"], n, False, d * d)
    fused = torch.maximum(f * channel[:, :, None, None], F.relu(f) * spatial.view(b, 1, h, w))
    np.testing.assert_allclose(np.asarray(out["raw_embedding"]), fused.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_soap_head_matches_a_pytorch_transcription_of_the_release():
    b, h, w, c = 2, 3, 4, 6
    x = RNG.normal(size=(b, h, w, c)).astype(np.float32)
    head = SOAPHead(embedding_dim=5, channel_reduction=2)
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]
    out, _ = head.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    xt = nchw(x)
    conv = lambda v, name: F.conv2d(v, conv_weight(p[name]["kernel"]), t(p[name]["bias"]))
    q = F.relu(torch_bn(conv(xt, "query"))).flatten(2).transpose(1, 2)
    k = F.relu(torch_bn(conv(xt, "key"))).flatten(2).transpose(1, 2)
    v = conv(xt, "value").flatten(2).transpose(1, 2)
    z = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(a)) v
    z = conv(z.transpose(1, 2).reshape(b, 3, h, w), "transform")
    enhanced = (xt + z).clamp(min=1e-6)
    power = float(p["power"])
    raw = enhanced.pow(power).mean((2, 3)).pow(1 / power) @ t(p["projection"]["kernel"])
    np.testing.assert_allclose(np.asarray(out["raw_embedding"]), raw.numpy(), rtol=1e-4, atol=1e-5)


def test_otp_head_starts_as_gap_then_transports_to_k_center_support():
    head = OTPHead(embedding_dim=6, support_size=2, memory_size=8, iterations=10)
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    variables = head.init(jax.random.key(1), x)
    refresh = lambda v: head.apply(v, method=OTPHead.refresh, mutable=True)[1]
    for step in range(2):
        out, updates = head.apply(variables, x + step, train=True, mutable=["otp"])
        variables = {**variables, **updates}
        kernel = variables["params"]["projection"]["kernel"]
        gap = jnp.mean((x + step) @ kernel, axis=(1, 2))
        np.testing.assert_allclose(np.asarray(out["raw_embedding"][:, :3]), np.asarray(gap), rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(out["raw_embedding"][:, 3:]), 0.0)
        variables = {**variables, **refresh(variables)}
    memory = np.asarray(variables["otp"]["memory"])
    support = np.asarray(variables["params"]["support"])
    assert any(np.allclose(support[0], row) for row in memory[2:])  # picked after the 2 seeding rows
    out = head.apply(variables, x)
    np.testing.assert_allclose(np.asarray(out["raw_embedding"]),
                               np.asarray(otp_pool(x @ kernel, jnp.asarray(support))), rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cbam", "crow", "delf", "gem", "gsop", "netvlad", "otp", "soap", "weldon"])
def test_every_baseline_builds_from_the_config_and_has_gradients(pooling):
    cfg = default_config()
    cfg.model.pooling, cfg.model.embedding_dim, cfg.model.width = pooling, 16, 8
    cfg.model.otp.support_size, cfg.model.otp.memory_size, cfg.model.netvlad.num_centers = 4, 0, 4
    validate(cfg)
    model = build_model(cfg.model)
    images = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), images)
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        out, _ = model.apply({"params": params, **state}, images, train=True, mutable=list(state))
        return jnp.sum(out["embedding"][0] * out["embedding"][1])

    value, grads = jax.value_and_grad(loss)(variables["params"])
    assert np.isfinite(float(value))
    head_grads = jax.tree.leaves(grads["head"])
    assert all(np.all(np.isfinite(g)) for g in head_grads) and any(np.any(g != 0) for g in head_grads)


def test_a_split_embedding_must_divide_evenly():
    cfg = default_config()
    cfg.model.pooling, cfg.model.embedding_dim, cfg.model.netvlad.num_centers = "netvlad", 64, 12
    with pytest.raises(ConfigError, match=r"model.netvlad.num_centers=12 .*must divide model.embedding_dim=64"):
        validate(cfg)


def test_crow_has_finite_gradients_where_a_location_or_the_whole_map_is_zero():
    x = np.maximum(RNG.normal(size=(2, 3, 3, 4)), 0).astype(np.float32)
    x[0, 1, 1] = 0.0  # one dead location
    x[1] = 0.0  # a dead map
    grads = jax.grad(lambda v: crow_pool(v).sum())(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grads)))
    assert np.all(np.isfinite(np.asarray(crow_pool(jnp.asarray(x)))))
    # A positive map keeps the release's weights (the authors' formula, tested above) and finite-difference gradient.
    y = jnp.asarray(np.abs(RNG.normal(size=(1, 2, 2, 3))).astype(np.float32) + 0.1, dtype=jnp.float32)
    from jax.test_util import check_grads
    check_grads(lambda v: crow_pool(v), (y.astype(jnp.float64) if jax.config.jax_enable_x64 else y,), order=1,
                modes=["rev"], atol=2e-2, rtol=2e-2)
