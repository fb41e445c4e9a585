"""Pair-based losses (jaxdml.losses.pair) against pytorch-metric-learning: the same value and the same gradient in
float64, on several label patterns, with a reference memory, with pair masks and mined triplets; the seed papers'
loss settings on hand-computed 4-point cases; O(B²) memory at B = 1,024.

Deliberate differences from PML, tested as such: the lifted structure loss with a reference set (PML matches a
reference index against batch indices; here the positive's negatives are left out), ``swap`` and ``n_pairs_loss``
with a reference set (errors), the margin loss's β given in float32 by PML (we pass the same float32 value).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.losses import pair as P

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances as pml_distances  # noqa: E402
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402
from pytorch_metric_learning import reducers as pml_reducers  # noqa: E402

N, DIM, REF = 16, 8, 12
LABELS = {
    "balanced": np.repeat(np.arange(4), 4),
    "with_singletons": np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 8]),
    "random": np.random.default_rng(7).integers(0, 5, N),
    "one_class": np.zeros(N, int),
}
BETA = float(np.float32(1.2))  # PML keeps MarginLoss's beta in a float32 tensor


def _per_anchor_sum(loss):
    """PML loss with a SumReducer, divided by the number of anchors (our reduction='sum_per_anchor')."""
    return lambda emb, labels, *args, **kwargs: loss(emb, labels, *args, **kwargs) / emb.shape[0]


# id: (our loss, its kwargs, PML loss factory, whether PML's ref_emb semantics are ours)
CASES = {
    "triplet": (P.triplet_margin_loss, {}, lambda: pml_losses.TripletMarginLoss(), True),
    "triplet-swap": (P.triplet_margin_loss, {"margin": 0.2, "swap": True},
                     lambda: pml_losses.TripletMarginLoss(margin=0.2, swap=True), False),
    "triplet-smooth": (P.triplet_margin_loss, {"margin": 0.1, "smooth_loss": True},
                       lambda: pml_losses.TripletMarginLoss(margin=0.1, smooth_loss=True), True),
    "margin": (P.margin_loss, {"beta": BETA}, lambda: pml_losses.MarginLoss(), True),
    "margin-0.1-0.75": (P.margin_loss, {"margin": 0.1, "beta": 0.75},
                        lambda: pml_losses.MarginLoss(margin=0.1, beta=0.75), True),
    "lifted": (P.lifted_structure_loss, {}, lambda: pml_losses.LiftedStructureLoss(), False),
    "lifted-0.8-0.1": (P.lifted_structure_loss, {"neg_margin": 0.8, "pos_margin": 0.1},
                       lambda: pml_losses.LiftedStructureLoss(neg_margin=0.8, pos_margin=0.1), False),
    "generalized_lifted": (P.generalized_lifted_structure_loss, {"neg_margin": 1.2, "pos_margin": 0.1},
                           lambda: pml_losses.GeneralizedLiftedStructureLoss(neg_margin=1.2, pos_margin=0.1), True),
    "n_pairs": (P.n_pairs_loss, {}, lambda: pml_losses.NPairsLoss(), False),
    "circle": (P.circle_loss, {}, lambda: pml_losses.CircleLoss(), True),
    "circle-0.25-256": (P.circle_loss, {"m": 0.25, "gamma": 256.0}, lambda: pml_losses.CircleLoss(m=0.25, gamma=256),
                        True),
    "supcon": (P.supcon_loss, {}, lambda: pml_losses.SupConLoss(), True),
    "supcon-0.5": (P.supcon_loss, {"temperature": 0.5}, lambda: pml_losses.SupConLoss(temperature=0.5), True),
    "ntxent": (P.ntxent_loss, {}, lambda: pml_losses.NTXentLoss(), True),
    "ntxent-0.2": (P.ntxent_loss, {"temperature": 0.2}, lambda: pml_losses.NTXentLoss(temperature=0.2), True),
    "contrastive-C1": (P.contrastive_loss,
                       {"distance": "cosine", "pos_margin": 1.0, "neg_margin": 0.5, "reduction": "sum_per_anchor"},
                       lambda: _per_anchor_sum(pml_losses.ContrastiveLoss(
                           pos_margin=1.0, neg_margin=0.5, distance=pml_distances.CosineSimilarity(),
                           reducer=pml_reducers.SumReducer())), True),
}
REF_CASES = [name for name, case in CASES.items() if case[3]]


def _data(labels, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(labels), DIM)) * rng.uniform(0.5, 2.0, size=(len(labels), 1))
    ref = rng.normal(size=(REF, DIM))
    ref_labels = rng.integers(0, 6, REF)
    mask = rng.uniform(size=(len(labels), len(labels) + REF)) < 0.7  # batch pairs, then memory pairs
    return x, ref, ref_labels, mask


@functools.cache
def _ours(name, with_ref=False, with_mask=False, **extra):
    """jit(value_and_grad) of case ``name``, cached so that each configuration compiles once."""
    fn, kwargs, _, _ = CASES[name]
    fn = functools.partial(fn, **kwargs, **extra)

    def loss(x, labels, ref, ref_labels, mask):
        return fn(x, labels, ref if with_ref else None, ref_labels if with_ref else None,
                  pair_mask=mask if with_mask else None)

    return jax.jit(jax.value_and_grad(loss))


def _check(value, grad, expected, t):
    np.testing.assert_allclose(float(value), expected.item(), rtol=1e-9, atol=1e-12)
    reference_grad = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
    np.testing.assert_allclose(np.asarray(grad), reference_grad, rtol=1e-7, atol=1e-10)


def _compare(name, labels, *, seed, with_ref=False, mask_to_tuple=False, **extra):
    """Our loss against PML on the same float64 data; ``mask_to_tuple``: a random pair mask, given to PML as the
    equivalent (a1, p, a2, n) tuple."""
    x, ref, ref_labels, mask = _data(labels, seed)
    mask = mask[:, len(labels):] if with_ref else mask[:, :len(labels)]
    if not with_ref:
        ref = ref_labels = None
    t = torch.tensor(x, requires_grad=True)
    args = {}
    if with_ref:
        args = {"ref_emb": torch.tensor(ref), "ref_labels": torch.tensor(ref_labels)}
    if mask_to_tuple:
        with jax.enable_x64(True):
            pos, neg = P.pair_masks(jnp.asarray(labels), None if ref_labels is None else jnp.asarray(ref_labels),
                                    jnp.asarray(mask))
        args["indices_tuple"] = tuple(torch.as_tensor(np.array(i)) for i in (*np.nonzero(pos), *np.nonzero(neg)))
    expected = CASES[name][2]()(t, torch.tensor(labels), **args)
    expected.backward()
    fill = np.zeros((len(labels), REF if with_ref else len(labels)), bool)
    with jax.enable_x64(True):
        value, grad = _ours(name, with_ref, mask_to_tuple, **extra)(
            jnp.asarray(x), jnp.asarray(labels), jnp.asarray(ref if with_ref else x),
            jnp.asarray(ref_labels if with_ref else labels), jnp.asarray(mask if mask_to_tuple else fill))
    _check(value, grad, expected, t)


@pytest.mark.parametrize("pattern", sorted(LABELS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_pml(name, pattern):
    _compare(name, LABELS[pattern], seed=len(name))


@pytest.mark.parametrize("pattern", ["random", "one_class"])
@pytest.mark.parametrize("name", REF_CASES)
def test_reference_memory_matches_pml(name, pattern):
    _compare(name, LABELS[pattern], seed=len(name) + 1, with_ref=True)


@pytest.mark.parametrize("name", ["triplet", "triplet-swap", "triplet-smooth", "margin", "lifted",
                                  "generalized_lifted", "n_pairs", "circle", "supcon", "ntxent"])
def test_pair_mask_matches_pml_indices_tuple(name):
    _compare(name, LABELS["random"], seed=3, mask_to_tuple=True)


@pytest.mark.parametrize("name", ["triplet", "margin", "circle", "ntxent"])
def test_pair_mask_with_reference_memory_matches_pml(name):
    _compare(name, LABELS["balanced"], seed=4, with_ref=True, mask_to_tuple=True)


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_selection_matches_pml_triplet_margin_miner(kind):
    """``triplets=TripletSelection(kind, margin)`` = PML's loss on ``TripletMarginMiner(margin, kind)``'s triplets."""
    labels = LABELS["random"]
    for name, miner_margin, with_ref in [("triplet", 0.2, False), ("triplet", -0.05, True),
                                         ("triplet-swap", 0.1, False), ("triplet-smooth", 0.15, True),
                                         ("margin", 0.3, True)]:
        x, ref, ref_labels, _ = _data(labels, seed=5)
        t = torch.tensor(x, requires_grad=True)
        args = {"ref_emb": torch.tensor(ref), "ref_labels": torch.tensor(ref_labels)} if with_ref else {}
        miner = pml_miners.TripletMarginMiner(margin=miner_margin, type_of_triplets=kind)
        tuple_ = miner(t, torch.tensor(labels), args.get("ref_emb"), args.get("ref_labels"))
        assert len(tuple_[0]) > 0 or kind == "easy" or miner_margin < 0  # the case is not vacuous
        expected = CASES[name][2]()(t, torch.tensor(labels), tuple_, **args)
        expected.backward()
        selection = P.TripletSelection(kind, miner_margin)
        with jax.enable_x64(True):
            value, grad = _ours(name, with_ref, triplets=selection)(
                jnp.asarray(x), jnp.asarray(labels), jnp.asarray(ref if with_ref else x),
                jnp.asarray(ref_labels if with_ref else labels), jnp.zeros((), bool))
        _check(value, grad, expected, t)


def test_batch_hard_miner_as_pair_mask():
    """A miner's one positive / one negative per anchor, as a pair mask, gives PML's triplets (a, p, n)."""
    labels = LABELS["balanced"]
    x, *_ = _data(labels, seed=6)
    t = torch.tensor(x, requires_grad=True)
    a, p, n = pml_miners.BatchHardMiner()(t, torch.tensor(labels))
    mask = np.zeros((N, N), bool)
    mask[a.numpy(), p.numpy()] = mask[a.numpy(), n.numpy()] = True
    for name in ("triplet", "margin"):
        t.grad = None
        expected = CASES[name][2]()(t, torch.tensor(labels), (a, p, n))
        expected.backward()
        with jax.enable_x64(True):
            value, grad = _ours(name, False, True)(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(x),
                                                   jnp.asarray(labels), jnp.asarray(mask))
        _check(value, grad, expected, t)


@pytest.mark.parametrize(("nu", "num_classes"), [(0.1, None), (0.3, 9)])
def test_margin_loss_learned_beta_matches_pml(nu, num_classes):
    """Value and gradients w.r.t. the embeddings and β (shared, then per class), with the ν·β regulariser."""
    reference = pml_losses.MarginLoss(margin=0.15, nu=nu, beta=1.25, learn_beta=True, num_classes=num_classes)
    reference.beta.data = reference.beta.data.double() * torch.linspace(0.9, 1.1, len(reference.beta)).double()
    for pattern in ("with_singletons", "one_class"):
        labels = LABELS[pattern]
        x, ref, ref_labels, _ = _data(labels, seed=8)
        for with_ref in (False, True):
            reference.beta.grad = None
            t = torch.tensor(x, requires_grad=True)
            args = {"ref_emb": torch.tensor(ref), "ref_labels": torch.tensor(ref_labels)} if with_ref else {}
            expected = reference(t, torch.tensor(labels), **args)
            expected.backward()
            beta = reference.beta.detach().numpy()
            with jax.enable_x64(True):
                def loss(x, beta, labels=labels, ref=ref if with_ref else None,
                         ref_labels=ref_labels if with_ref else None):
                    return P.margin_loss(x, jnp.asarray(labels), ref, ref_labels, margin=0.15, nu=nu, beta=beta,
                                         learn_beta=True, num_classes=num_classes)

                value, (grad, beta_grad) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(beta))
            _check(value, grad, expected, t)
            expected_beta_grad = np.zeros_like(beta) if reference.beta.grad is None else reference.beta.grad.numpy()
            np.testing.assert_allclose(np.asarray(beta_grad), expected_beta_grad, rtol=1e-7, atol=1e-10)
    params = P.margin_loss_init(jax.random.key(0), 100, 64, beta=1.25, learn_beta=True, num_classes=num_classes)
    assert params["beta"].shape == ((num_classes,) if num_classes else (1,))
    assert P.margin_loss_init(jax.random.key(0), 100, 64, learn_beta=False) == {}


def test_lifted_structure_with_reference_uses_the_anchors_negatives():
    """Deliberate difference: with a memory, the log-sum-exp runs over the anchor's negatives only. PML computes that
    when the reference indices cannot collide with batch indices, so shift them past the batch."""
    labels = LABELS["random"]
    x, ref, ref_labels, _ = _data(labels, seed=9)
    t = torch.tensor(x, requires_grad=True)
    ref_padded = np.concatenate([np.zeros((N, DIM)), ref])
    labels_padded = np.concatenate([np.full(N, -1), ref_labels])
    same = labels[:, None] == ref_labels[None, :]
    a1, p = np.nonzero(same)
    a2, n = np.nonzero(~same)
    tuple_ = tuple(torch.as_tensor(i) for i in (a1, p + N, a2, n + N))
    expected = pml_losses.LiftedStructureLoss(neg_margin=0.8, pos_margin=0.1)(
        t, torch.tensor(labels), tuple_, torch.tensor(ref_padded), torch.tensor(labels_padded))
    expected.backward()
    with jax.enable_x64(True):
        value, grad = _ours("lifted-0.8-0.1", True, False)(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(ref),
                                                           jnp.asarray(ref_labels), jnp.zeros((), bool))
    _check(value, grad, expected, t)


def test_n_pairs_uses_each_class_first_two_samples():
    """PML's choice: per class, its first sample as anchor and its second as positive; other samples unused."""
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 3, 1, 2])
    x = np.random.default_rng(10).normal(size=(len(labels), DIM))
    anchors, positives = [1, 3, 0], [4, 8, 2]  # classes 0, 1, 2; class 3 has no pair
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = xn[anchors] @ xn[positives].T
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    with jax.enable_x64(True):
        value = P.n_pairs_loss(jnp.asarray(x), jnp.asarray(labels))
        moved = P.n_pairs_loss(jnp.asarray(x).at[5].multiply(-3.0).at[6].add(1.0), jnp.asarray(labels))
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    np.testing.assert_allclose(float(moved), expected, rtol=1e-12)  # unused samples do not matter


def test_unsupported_combinations_are_refused():
    x, labels = jnp.ones((4, 3)), jnp.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="swap"):
        P.triplet_margin_loss(x, labels, x, labels, swap=True)
    with pytest.raises(ValueError, match="reference set"):
        P.n_pairs_loss(x, labels, x, labels)
    with pytest.raises(ValueError, match="triplets_per_anchor"):
        P.triplet_margin_loss(x, labels, triplets_per_anchor=10)
    with pytest.raises(ValueError, match="kind"):
        P.TripletSelection("semi-hard")
    with pytest.raises(ValueError, match="reduction"):
        P.contrastive_loss(x, labels, reduction="mean")


# Hand-computed cases: four unit vectors at 0°, 60°, 90° and 150° (two rescaled, the losses normalise), classes
# {0, 1} and {2, 3}. Cosine similarities: s01 = s23 = 1/2, s02 = s13 = 0, s03 = -√3/2, s12 = √3/2;
# distances sqrt(2 - 2s): d01 = d23 = 1, d02 = d13 = √2, d03 = sqrt(2 + √3), d12 = sqrt(2 - √3).
FOUR = np.array([[2.5, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0], [-0.4 * math.sqrt(3) / 2, 0.4 * 0.5]])
FOUR_LABELS = np.array([0, 0, 1, 1])
D12, D03, R2, R3 = math.sqrt(2 - math.sqrt(3)), math.sqrt(2 + math.sqrt(3)), math.sqrt(2), math.sqrt(3)


def _four(fn, **kwargs):
    with jax.enable_x64(True):
        return float(fn(jnp.asarray(FOUR), jnp.asarray(FOUR_LABELS), **kwargs))


@pytest.mark.parametrize(("pos_margin", "expected"), [
    (1.0, (1 + R3) / 4),  # positives: 4 x (1 - 1/2); negatives: s12 = s21 = √3/2 > 0.5; divided by 4 anchors
    (1.0 - 1e-5, (4 * (0.5 - 1e-5) + 2 * (R3 / 2 - 0.5)) / 4),  # the TF code's eps
])
def test_c1_original_contrastive_by_hand(pos_margin, expected):
    value = _four(P.contrastive_loss, distance="cosine", pos_margin=pos_margin, neg_margin=0.5,
                  reduction="sum_per_anchor")
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("margins", "expected"), [
    ((0.0, 0.3841), 1.0),  # CUB: every positive at d = 1; no negative closer than 0.3841
    ((0.2652, 0.5409), (1 - 0.2652) + (0.5409 - D12)),  # Cars: d12 = 0.5176 < 0.5409 is the one active negative
    ((0.2858, 0.5130), 1 - 0.2858),  # SOP / In-shop
])
def test_c2_contrastive_by_hand(margins, expected):
    value = _four(P.contrastive_loss, pos_margin=margins[0], neg_margin=margins[1])
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("margin", [0.0961, 0.1190, 0.0451])  # CUB, Cars, SOP / In-shop
def test_triplet_margins_by_hand(margin):
    # Of the 8 triplets only (1, 0, 2) and (2, 3, 1) violate the margin: d_ap - d_an = 1 - d12.
    assert _four(P.triplet_margin_loss, margin=margin) == pytest.approx(1 - D12 + margin, rel=1e-12)


@pytest.mark.parametrize(("selection", "margin", "expected"), [
    (P.TripletSelection("semihard", 0.5), 0.5, 1.5 - R2),  # (0,1,2), (1,0,3), (2,3,0), (3,2,1): d_an - d_ap = √2 - 1
    (P.TripletSelection("hard", 0.2), 0.05, 1.05 - D12),  # (1,0,2), (2,3,1): d_an - d_ap = d12 - 1 <= 0
    (P.TripletSelection("easy", 0.5), 1.0, 2 - D03),  # (0,1,3), (3,2,0): d_an - d_ap = d03 - 1 > 0.5
    (P.TripletSelection("easy", 0.5), 0.5, 0.0),  # ... but they satisfy a margin of 0.5
])
def test_mined_triplets_by_hand(selection, margin, expected):
    assert _four(P.triplet_margin_loss, margin=margin, triplets=selection) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("selection", "margin", "expected"), [
    (P.TripletSelection("hard", 0.5), 0.3, (0.3 + 1.3 - D12) / 2),  # (0, 1, 2) with d_an - d_ap = 0, and (1, 0, 3)
    (P.TripletSelection("semihard", 0.5), 0.3, 0.0),  # only (0, 1, 3), whose violation 1 - √2 + 0.3 is < 0
    (P.TripletSelection("all", 0.0), 0.3, (0.3 + 1.3 - D12) / 2),  # <= 0: the same two as "hard"
    (P.TripletSelection("easy", 0.0), 1.0, (2 - R2 + 2 - R3) / 2),  # > 0: (0, 1, 3) and (1, 0, 2)
    (None, 0.0, 1 - D12),  # (0, 1, 2) violates a zero margin by exactly 0: not a term of the mean
    (P.TripletSelection("all", 0.0), 0.0, 1 - D12),  # kept by the miner, still not a term of the mean
])
def test_triplet_boundaries_by_hand(selection, margin, expected):
    # Anchor 0 at 0°, its positive 1 at 60°, negatives 2 at -60° and 3 at 90° (classes 1, 2: anchors 0 and 1 only).
    # d(0, 1) = d(0, 2) = 1 to the last bit, d(0, 3) = √2, d(1, 2) = √3, d(1, 3) = sqrt(2 - √3); d_an - d_ap is
    # 0 for (0, 1, 2), √2 - 1 for (0, 1, 3), √3 - 1 for (1, 0, 2) and sqrt(2 - √3) - 1 < 0 for (1, 0, 3).
    x = np.array([[1.0, 0.0], [0.5, R3 / 2], [0.5, -R3 / 2], [0.0, 1.0]])
    with jax.enable_x64(True):
        value = P.triplet_margin_loss(jnp.asarray(x), jnp.asarray([0, 0, 1, 2]), margin=margin, triplets=selection)
    assert float(value) == pytest.approx(expected, abs=1e-12)


def test_multi_similarity_cub_setting_by_hand():
    # (alpha, beta, lambda) = (2, 40, 0.5): every anchor's positive has s = 1/2, so its term is ln(1 + e^0) / 2;
    # negatives: anchors 0 and 3 see s = 0 and -√3/2, anchors 1 and 2 see s = √3/2 and 0.
    near = math.log(1 + math.exp(40 * (R3 / 2 - 0.5)) + math.exp(-20))
    far = math.log(1 + math.exp(-20) + math.exp(40 * (-R3 / 2 - 0.5)))
    expected = math.log(2) / 2 + (near + far) / 80
    assert _four(P.multi_similarity_loss, alpha=2.0, beta=40.0, base=0.5) == pytest.approx(expected, rel=1e-12)


def test_gradients_are_finite_for_duplicates_and_zero_vectors():
    x = np.random.default_rng(11).normal(size=(8, 4)).astype(np.float32)
    x[1], x[2], x[5] = x[0], 0.0, 3 * x[4]
    labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 0])
    losses = [functools.partial(fn, **kwargs) for fn, kwargs, _, _ in CASES.values()]
    losses.append(functools.partial(P.triplet_margin_loss, triplets=P.TripletSelection("semihard")))
    losses.append(functools.partial(P.margin_loss, learn_beta=True, nu=0.1, num_classes=4))
    value, grad = jax.jit(jax.value_and_grad(lambda x: sum(fn(x, labels) for fn in losses)))(jnp.asarray(x))
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


LARGE = {
    "triplet": functools.partial(P.triplet_margin_loss, triplets=P.TripletSelection("semihard", 0.2)),
    "triplet-swap-smooth": functools.partial(P.triplet_margin_loss, swap=True, smooth_loss=True),
    "margin": functools.partial(P.margin_loss, triplets=P.TripletSelection("hard", 0.2)),
    "lifted": P.lifted_structure_loss,
    "generalized_lifted": P.generalized_lifted_structure_loss,
    "n_pairs": P.n_pairs_loss,
    "circle": P.circle_loss,
    "supcon": P.supcon_loss,
    "ntxent": P.ntxent_loss,
}


def test_large_batch_memory_is_quadratic_not_cubic():
    """1,024 x 512: the compiled loss-and-gradient needs O(B²) temporaries (B³ float32 would be 4 GiB)."""
    x = jax.ShapeDtypeStruct((1024, 512), jnp.float32)
    labels = jax.ShapeDtypeStruct((1024,), jnp.int32)
    for name, fn in LARGE.items():
        compiled = jax.jit(jax.value_and_grad(fn)).lower(x, labels).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 128 * 2**20, f"{name} needs {temp / 2**20:.0f} MiB of temporaries"
