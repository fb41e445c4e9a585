"""Losses against pytorch-metric-learning: same value and same gradient (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.losses import make_loss

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

LABEL_PATTERNS = {
    "balanced": np.repeat(np.arange(8), 4),
    "with_singletons": np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 8]),
    "random": np.random.default_rng(7).integers(0, 5, 24),
    "one_class": np.zeros(6, int),
}

CASES = [
    ("contrastive", {}, lambda: pml_losses.ContrastiveLoss()),
    ("contrastive", {"pos_margin": 0.25, "neg_margin": 0.9},
     lambda: pml_losses.ContrastiveLoss(pos_margin=0.25, neg_margin=0.9)),
    ("contrastive", {"pos_margin": 0.8, "neg_margin": 0.5, "distance": "cosine"},
     lambda: pml_losses.ContrastiveLoss(pos_margin=0.8, neg_margin=0.5, distance=pml_distances.CosineSimilarity())),
    ("multi_similarity", {}, lambda: pml_losses.MultiSimilarityLoss()),
    ("multi_similarity", {"alpha": 14.35, "beta": 75.83, "base": 0.66},
     lambda: pml_losses.MultiSimilarityLoss(alpha=14.35, beta=75.83, base=0.66)),
]


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize(("name", "kwargs", "reference"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_value_and_gradient_match_pml(name, kwargs, reference, pattern):
    labels = LABEL_PATTERNS[pattern]
    rng = np.random.default_rng(len(labels) + len(kwargs))
    x = rng.normal(size=(len(labels), 16)) * rng.uniform(0.5, 2.0, size=(len(labels), 1))
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    expected = reference()(t, torch.tensor(labels))
    expected.backward()
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(make_loss(name, kwargs))(jnp.asarray(x), jnp.asarray(labels))
        np.testing.assert_allclose(float(value), expected.item(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-7, atol=1e-10)


def test_identical_positive_pair_has_finite_gradient():
    x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    grad = jax.grad(make_loss("contrastive", {"pos_margin": 0.0}))(x, jnp.array([0, 0, 1]))
    assert np.isfinite(np.asarray(grad)).all()


def test_unknown_loss_and_hyper_parameter_are_named():
    with pytest.raises(ValueError, match=r"unknown loss 'contrastve'.*Did you mean contrastive"):
        make_loss("contrastve")
    with pytest.raises(ValueError, match=r"no hyper-parameter 'neg_margn'.*Did you mean neg_margin"):
        make_loss("contrastive", {"neg_margn": 1.0})


def test_large_batch_memory_is_quadratic_not_cubic():
    # 1,024 x 512 runs in well under a second of memory traffic if nothing is B^2 x D.
    x = jax.random.normal(jax.random.key(0), (1024, 512))
    labels = jnp.arange(1024) // 4
    for name in ("contrastive", "multi_similarity"):
        lowered = jax.jit(jax.value_and_grad(make_loss(name))).lower(x, labels).compile()
        temp = lowered.memory_analysis().temp_size_in_bytes
        assert temp < 64 * 1024 * 1024, f"{name} needs {temp / 2**20:.0f} MiB of temporaries"
