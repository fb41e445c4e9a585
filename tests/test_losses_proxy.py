"""Proxy and classifier losses against pytorch-metric-learning: value, gradients (embeddings and loss parameters)
in float64 on identical parameters, and the initialisers' shapes and distributions."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.losses import proxy

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")

DIM = 8

NUM_CLASSES = 8
# Same batch size and class count for every pattern, so each case compiles once.
LABEL_PATTERNS = {
    "balanced": np.repeat(np.arange(NUM_CLASSES), 2),
    "singletons": np.array([0, 0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 7, 7]),
    "absent_classes": np.array([0, 2, 2, 5, 5, 5, 0, 2, 7, 7, 0, 5, 2, 2, 7, 0]),  # 1, 3, 4, 6 absent
    "random": np.random.default_rng(3).integers(0, NUM_CLASSES, 16),
}

# (our loss, our hyper-parameters, PML factory (num_classes, embedding_size) -> loss, PML attribute, our key)
CASES = {
    "proxy_nca": (proxy.proxy_nca_loss, {}, lambda c, d: pml_losses.ProxyNCALoss(c, d), "proxies", "proxies"),
    "proxy_nca-scale5": (proxy.proxy_nca_loss, {"softmax_scale": 5.0},
                         lambda c, d: pml_losses.ProxyNCALoss(c, d, softmax_scale=5.0), "proxies", "proxies"),
    "proxy_nca_pp": (proxy.proxy_nca_pp_loss, {}, lambda c, d: pml_losses.ProxyNCALoss(c, d, softmax_scale=9.0),
                     "proxies", "proxies"),
    "proxy_nca_pp-T0.05": (proxy.proxy_nca_pp_loss, {"temperature": 0.05},
                           lambda c, d: pml_losses.ProxyNCALoss(c, d, softmax_scale=20.0), "proxies", "proxies"),
    "proxy_anchor": (proxy.proxy_anchor_loss, {}, lambda c, d: pml_losses.ProxyAnchorLoss(c, d), "proxies",
                     "proxies"),
    "proxy_anchor-m0.3a16": (proxy.proxy_anchor_loss, {"margin": 0.3, "alpha": 16.0},
                             lambda c, d: pml_losses.ProxyAnchorLoss(c, d, margin=0.3, alpha=16.0), "proxies",
                             "proxies"),
    "soft_triple": (proxy.soft_triple_loss, {}, lambda c, d: pml_losses.SoftTripleLoss(c, d), "fc", "centers"),
    "soft_triple-K3-tau": (
        proxy.soft_triple_loss, {"centers_per_class": 3, "la": 17.69, "gamma": 0.05, "margin": 0.3588, "tau": 0.2},
        lambda c, d: pml_losses.SoftTripleLoss(
            c, d, centers_per_class=3, la=17.69, gamma=0.05, margin=0.3588,
            weight_regularizer=pml_regularizers.SparseCentersRegularizer(c, 3), weight_reg_weight=0.2),
        "fc", "centers"),
    "soft_triple-K1": (proxy.soft_triple_loss, {"centers_per_class": 1, "la": 5.0},
                       lambda c, d: pml_losses.SoftTripleLoss(c, d, centers_per_class=1, la=5.0), "fc", "centers"),
    "normalized_softmax": (proxy.normalized_softmax_loss, {}, lambda c, d: pml_losses.NormalizedSoftmaxLoss(c, d),
                           "W", "W"),
    "normalized_softmax-T0.5": (proxy.normalized_softmax_loss, {"temperature": 0.5},
                                lambda c, d: pml_losses.NormalizedSoftmaxLoss(c, d, temperature=0.5), "W", "W"),
    "cosface": (proxy.cosface_loss, {}, lambda c, d: pml_losses.CosFaceLoss(c, d), "W", "W"),
    "cosface-m0.2s30": (proxy.cosface_loss, {"margin": 0.2, "scale": 30.0},
                        lambda c, d: pml_losses.CosFaceLoss(c, d, margin=0.2, scale=30.0), "W", "W"),
    "arcface": (proxy.arcface_loss, {}, lambda c, d: pml_losses.ArcFaceLoss(c, d), "W", "W"),
    "arcface-m10s16": (proxy.arcface_loss, {"margin": 10.0, "scale": 16.0},
                       lambda c, d: pml_losses.ArcFaceLoss(c, d, margin=10.0, scale=16.0), "W", "W"),
}


def _class_directions(key: str, param: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, D) one parameter vector per class (the first centre for SoftTriple)."""
    if key == "proxies":
        return param
    if key == "W":
        return param.T
    return param.T[:: param.shape[1] // num_classes]


def _embeddings(directions: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Samples near their class vector, one opposite to it (ArcFace's θ > π - m branch), one random; raw norms."""
    rng = np.random.default_rng(seed)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    sign = np.ones(len(labels))
    sign[0], sign[1] = -1.0, 0.0
    noise = rng.normal(size=(len(labels), directions.shape[1])) * np.where(sign == 1.0, 0.3, 0.05)[:, None]
    noise[1] = rng.normal(size=directions.shape[1])
    return (sign[:, None] * unit[labels] + noise) * rng.uniform(0.5, 3.0, size=(len(labels), 1))


def _pml_value_and_grads(module, attr: str, x: np.ndarray, labels: np.ndarray):
    param = getattr(module, attr)
    param.data = param.data.double()
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = module(t, torch.tensor(labels))
    value.backward()
    return value.item(), t.grad.numpy(), param.grad.numpy()


def _ours(loss, kwargs):
    return jax.jit(jax.value_and_grad(functools.partial(loss, **kwargs), argnums=(0, 2)))


@functools.cache
def _ours_for_case(case: str):
    loss, kwargs, *_ = CASES[case]
    return _ours(loss, kwargs)


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("case", list(CASES))
def test_value_and_gradients_match_pml(case, pattern):
    _, _, factory, attr, key = CASES[case]
    labels = LABEL_PATTERNS[pattern]
    torch.manual_seed(len(case) + len(pattern))
    module = factory(NUM_CLASSES, DIM)
    param = getattr(module, attr).detach().double().numpy().copy()
    x = _embeddings(_class_directions(key, param, NUM_CLASSES), labels, seed=len(pattern))
    expected, grad_x, grad_param = _pml_value_and_grads(module, attr, x, labels)
    with jax.enable_x64(True):
        value, (gx, gparams) = _ours_for_case(case)(jnp.asarray(x), jnp.asarray(labels), {key: jnp.asarray(param)})
        assert gparams[key].shape == param.shape
        np.testing.assert_allclose(float(value), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(gx), grad_x, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(np.asarray(gparams[key]), grad_param, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
def test_arcface_fallback_branch_is_exercised(pattern):
    """The parity embeddings put a sample beyond θ = π - m, so both branches of PML's ``torch.where`` are tested."""
    torch.manual_seed(len("arcface") + len(pattern))
    w = pml_losses.ArcFaceLoss(NUM_CLASSES, DIM).W.detach().double().numpy()
    labels = LABEL_PATTERNS[pattern]
    x = _embeddings(w.T, labels, seed=len(pattern))
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    angles = np.arccos(cos[np.arange(len(labels)), labels])
    assert (angles > np.pi - np.radians(28.6)).any() and (angles <= np.pi - np.radians(28.6)).any()


def test_arcface_gradient_is_finite_where_pml_is_nan():
    """Embeddings on their class weight's direction (|cos| >= 1 after rounding): PML's gradient is NaN there
    under torch 2.13 (acos' at the clip bound; under 2.14 the rounding can land inside the bound), ours is
    always finite; everywhere PML's gradient is finite, and for the value, they agree."""
    torch.manual_seed(0)
    module = pml_losses.ArcFaceLoss(NUM_CLASSES, DIM)
    w = module.W.detach().double().numpy().copy()
    labels = np.arange(NUM_CLASSES)
    x = w.T * np.linspace(0.5, 3.0, NUM_CLASSES)[:, None]
    x[-2:] = -x[-2:]  # cos = -1: the other clip bound
    expected, grad_x, grad_w = _pml_value_and_grads(module, "W", x, labels)
    with jax.enable_x64(True):
        value, (gx, gp) = _ours(proxy.arcface_loss, {})(jnp.asarray(x), jnp.asarray(labels), {"W": jnp.asarray(w)})
        gx, gw = np.asarray(gx), np.asarray(gp["W"])
    np.testing.assert_allclose(float(value), expected, rtol=1e-9)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()
    finite_x, finite_w = np.isfinite(grad_x), np.isfinite(grad_w)
    assert finite_x.any()
    # At |cos| -> 1 the derivative is ill-conditioned (acos' -> inf times a vanishing factor): 1e-5 there.
    np.testing.assert_allclose(gx[finite_x], grad_x[finite_x], rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(gw[finite_w], grad_w[finite_w], rtol=1e-5, atol=1e-10)


def _two_d_underflow_case(scale: float):
    """Sample 0 sits on proxy 1 but is labelled 0 (opposite proxy): -log p_0 ≈ 4·scale; the others are easy."""
    angles = np.array([0.0, np.pi, np.pi / 2, -np.pi / 2])
    proxies = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = np.array([[-1.0, 0.01], [1.0, 0.2], [0.1, 1.0], [-0.1, -1.0], [-1.0, -0.3]])
    labels = np.array([0, 0, 2, 3, 1])
    module = pml_losses.ProxyNCALoss(4, 2, softmax_scale=scale)
    module.proxies.data = torch.tensor(proxies)
    return module, proxies, x, labels


def _official_proxy_nca_pp(x: np.ndarray, labels: np.ndarray, proxies: np.ndarray, temperature: float):
    """The official ``ProxyNCA_prob.forward`` in torch (scale sqrt(1/T) on unit vectors, squared distance)."""
    t = torch.tensor(x, requires_grad=True)
    p = torch.tensor(proxies, requires_grad=True)
    scale = math.sqrt(1.0 / temperature)
    xs = scale * torch.nn.functional.normalize(t, dim=-1)
    ps = scale * torch.nn.functional.normalize(p, dim=-1)
    d = torch.cdist(xs, ps) ** 2
    loss = -torch.nn.functional.log_softmax(-d, dim=-1)[torch.arange(len(labels)), torch.tensor(labels)].mean()
    loss.backward()
    return loss.item(), t.grad.numpy(), p.grad.numpy()


def test_proxy_nca_drops_underflowing_sample_like_pml():
    module, proxies, x, labels = _two_d_underflow_case(scale=250.0)
    expected, grad_x, grad_p = _pml_value_and_grads(module, "proxies", x, labels)
    with jax.enable_x64(True):
        value, (gx, gp) = _ours(proxy.proxy_nca_loss, {"softmax_scale": 250.0})(
            jnp.asarray(x), jnp.asarray(labels), {"proxies": jnp.asarray(proxies)})
        np.testing.assert_allclose(float(value), expected, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(gx), grad_x, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(np.asarray(gp["proxies"]), grad_p, rtol=1e-7, atol=1e-10)
        assert np.all(np.asarray(gx)[0] == 0.0)  # the dropped sample gets no gradient


def test_proxy_nca_pp_keeps_underflowing_sample_unlike_pml():
    """Where PML's ProxyNCALoss(softmax_scale=1/T) drops a sample, ProxyNCA++ keeps it, as the official code."""
    temperature = 1.0 / 250.0
    module, proxies, x, labels = _two_d_underflow_case(scale=1.0 / temperature)
    pml_value = module(torch.tensor(x), torch.tensor(labels)).item()
    expected, grad_x, grad_p = _official_proxy_nca_pp(x, labels, proxies, temperature)
    with jax.enable_x64(True):
        value, (gx, gp) = _ours(proxy.proxy_nca_pp_loss, {"temperature": temperature})(
            jnp.asarray(x), jnp.asarray(labels), {"proxies": jnp.asarray(proxies)})
        np.testing.assert_allclose(float(value), expected, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(gx), grad_x, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(np.asarray(gp["proxies"]), grad_p, rtol=1e-7, atol=1e-10)
    assert float(value) > 150.0 and pml_value < 1.0  # sample 0 alone contributes ~4/T / 5 = 200


def test_proxy_nca_pp_is_ccp_reference_at_twice_its_temperature():
    """CCP's ProxyNCA++ is -log softmax(cos / t); ours at temperature 2t is the same loss (hand computation)."""
    labels = LABEL_PATTERNS["random"]
    rng = np.random.default_rng(0)
    proxies, t = rng.normal(size=(NUM_CLASSES, DIM)), 0.11
    x = _embeddings(proxies, labels, seed=1)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (proxies / np.linalg.norm(proxies, axis=1, keepdims=True)).T
    logits = cos / t
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    expected = -log_p[np.arange(len(labels)), labels].mean()
    with jax.enable_x64(True):
        value = proxy.proxy_nca_pp_loss(jnp.asarray(x), jnp.asarray(labels), {"proxies": jnp.asarray(proxies)},
                                        temperature=2 * t)
        np.testing.assert_allclose(float(value), expected, rtol=1e-10)


# --- initialisers ------------------------------------------------------------------------------------------------

# (our initialiser, hyper-parameters, PML factory (C, D), PML attribute, our key, (C, D) of the large draw)
INITS = {
    "proxy_nca": (proxy.init_proxy_nca_loss, {}, lambda c, d: pml_losses.ProxyNCALoss(c, d), "proxies", "proxies"),
    "proxy_anchor": (proxy.init_proxy_anchor_loss, {"margin": 0.2},
                     lambda c, d: pml_losses.ProxyAnchorLoss(c, d), "proxies", "proxies"),
    "soft_triple": (proxy.init_soft_triple_loss, {"centers_per_class": 4},
                    lambda c, d: pml_losses.SoftTripleLoss(c, d, centers_per_class=4), "fc", "centers"),
    "normalized_softmax": (proxy.init_normalized_softmax_loss, {},
                           lambda c, d: pml_losses.NormalizedSoftmaxLoss(c, d), "W", "W"),
    "cosface": (proxy.init_cosface_loss, {}, lambda c, d: pml_losses.CosFaceLoss(c, d), "W", "W"),
    "arcface": (proxy.init_arcface_loss, {"scale": 30.0}, lambda c, d: pml_losses.ArcFaceLoss(c, d), "W", "W"),
}
QUANTILES = np.array([0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])


def _assert_same_distribution(ours: np.ndarray, reference: np.ndarray) -> None:
    scale = reference.std()
    assert abs(ours.mean()) < 0.02 * scale and abs(reference.mean()) < 0.02 * scale
    np.testing.assert_allclose(ours.std(), scale, rtol=0.02)
    np.testing.assert_allclose(np.quantile(ours, QUANTILES), np.quantile(reference, QUANTILES), atol=0.03 * scale)


@pytest.mark.parametrize("name", list(INITS))
def test_initialiser_shape_and_distribution_match_pml(name):
    init, kwargs, factory, attr, key = INITS[name]
    num_classes, dim = 300, 128
    torch.manual_seed(0)
    reference = getattr(factory(num_classes, dim), attr).detach().numpy()
    params = init(jax.random.key(0), num_classes, dim, **kwargs)
    assert list(params) == [key]
    ours = np.asarray(params[key])
    assert ours.shape == reference.shape and ours.dtype == np.float32
    _assert_same_distribution(ours, reference)
    if name == "soft_triple":  # kaiming_uniform(a=sqrt(5)): U(±1/sqrt(fan_in)), fan_in = C·K
        bound = 1.0 / math.sqrt(num_classes * 4)
        assert np.abs(ours).max() <= bound and np.abs(ours).max() > 0.99 * bound


def test_proxy_nca_pp_initialiser_is_official_code_not_pml():
    """Official ProxyNCA++: torch.randn(C, D) / 8 (PML ProxyNCALoss draws N(0, 1))."""
    params = proxy.init_proxy_nca_pp_loss(jax.random.key(1), 300, 128, temperature=0.1)
    ours = np.asarray(params["proxies"])
    assert ours.shape == (300, 128)
    _assert_same_distribution(ours, torch.randn(300, 128, generator=torch.Generator().manual_seed(0)).numpy() / 8)
    wide = proxy.init_proxy_nca_pp_loss(jax.random.key(1), 300, 128, std=1.0)["proxies"]
    np.testing.assert_allclose(np.asarray(wide), 8 * ours, rtol=1e-6)


def test_initialisers_reject_unknown_hyper_parameters():
    with pytest.raises(ValueError, match="centres_per_class"):
        proxy.init_soft_triple_loss(jax.random.key(0), 3, 4, centres_per_class=2)
    with pytest.raises(ValueError, match="softmax_scale"):
        proxy.init_proxy_nca_pp_loss(jax.random.key(0), 3, 4, softmax_scale=9.0)


def test_soft_triple_rejects_centres_of_another_layout():
    params = proxy.init_soft_triple_loss(jax.random.key(0), 3, 4, centers_per_class=3)
    with pytest.raises(ValueError, match="centers_per_class=2"):
        proxy.soft_triple_loss(jnp.ones((2, 4)), jnp.array([0, 1]), params, centers_per_class=2)


@pytest.mark.parametrize("name", sorted(proxy.PROXY_LOSSES))
def test_float32_jit_from_initialiser_is_finite(name):
    """The registry pairs work end to end in float32 under jit, default hyper-parameters, gradients finite."""
    loss, init = proxy.PROXY_LOSSES[name]
    params = init(jax.random.key(0), 5, 16)
    x = jax.random.normal(jax.random.key(1), (12, 16))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])  # class 4 absent
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))(x, labels, params)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert jax.tree_util.tree_structure(grads[1]) == jax.tree_util.tree_structure(params)
