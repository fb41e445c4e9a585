"""Miners against pytorch-metric-learning: the mined pair (or triplet) sets are PML's, in float64 and float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.losses.miners import (
    MINERS,
    batch_hard_miner,
    multi_similarity_miner,
    pair_margin_miner,
    triplet_margin_miner,
)
from jaxdml.losses.pair import TripletSelection, contrastive_loss, euclidean_distances, triplet_margin_loss

torch = pytest.importorskip("torch")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

LABEL_PATTERNS = {  # one batch size: jax compiles each eager op once per shape
    "balanced": np.repeat(np.arange(6), 4),
    "with_singletons": np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 8, 9, 9, 9, 10, 11, 11, 12, 13]),
    "random": np.random.default_rng(7).integers(0, 5, 24),
    "one_class": np.zeros(24, int),
}

PAIR_CASES = [  # (name, our miner with its hyper-parameters, PML's miner)
    ("ms", multi_similarity_miner, lambda: pml_miners.MultiSimilarityMiner()),
    ("ms-0.3", functools.partial(multi_similarity_miner, epsilon=0.3),
     lambda: pml_miners.MultiSimilarityMiner(epsilon=0.3)),
    ("ms-0.02", functools.partial(multi_similarity_miner, epsilon=0.02),
     lambda: pml_miners.MultiSimilarityMiner(epsilon=0.02)),
    ("margin", pair_margin_miner, lambda: pml_miners.PairMarginMiner()),
    ("margin-0.8-1.2", functools.partial(pair_margin_miner, pos_margin=0.8, neg_margin=1.2),
     lambda: pml_miners.PairMarginMiner(pos_margin=0.8, neg_margin=1.2)),
    ("margin-0.5-1.0", functools.partial(pair_margin_miner, pos_margin=0.5, neg_margin=1.0),
     lambda: pml_miners.PairMarginMiner(pos_margin=0.5, neg_margin=1.0)),
    ("batch_hard", batch_hard_miner, lambda: pml_miners.BatchHardMiner()),
]
DTYPES = {"float64": np.float64, "float32": np.float32}


def clustered(labels, seed, dim=8, spread=0.6, dtype=np.float64, ties=True):
    """Class centres plus noise (so that margins select some pairs but not all), with a duplicated row (ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(labels.max()) + 1, dim))
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    x *= rng.uniform(0.5, 2.0, size=(len(labels), 1))  # miners normalise
    if ties and len(labels) > 5:
        x[4] = x[1]  # exact ties: batch hard must break them as PML does (first index)
    return x.astype(dtype)


def pml_mask(indices, shape):
    """PML's (a1, p, a2, n) or (a, p, n) as a (B, M) pair mask; asserts no pair is listed twice."""
    a1, p, a2, n = indices if len(indices) == 4 else (indices[0], indices[1], indices[0], indices[2])
    mask = np.zeros(shape, bool)
    for a, b in ((a1, p), (a2, n)):
        a, b = a.numpy(), b.numpy()
        assert len(set(zip(a, b, strict=True))) == len(a), "PML listed a pair twice"
        mask[a, b] = True
    return mask


def mine(miner, x, labels, ref=None, ref_labels=None, dtype="float64"):
    with jax.enable_x64(dtype == "float64"):
        args = [jnp.asarray(x), jnp.asarray(labels)]
        if ref is not None:
            args += [jnp.asarray(ref), jnp.asarray(ref_labels)]
        mask = jax.jit(miner)(*args)
        assert mask.dtype == bool and mask.shape == (len(labels), len(labels if ref is None else ref_labels))
        return np.asarray(mask)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize(("name", "miner", "reference"), PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_pair_set_matches_pml(name, miner, reference, pattern, dtype):
    labels = LABEL_PATTERNS[pattern]
    x = clustered(labels, seed=len(labels) + len(name), dtype=DTYPES[dtype])
    expected = pml_mask(reference()(torch.tensor(x), torch.tensor(labels)), (len(labels), len(labels)))
    np.testing.assert_array_equal(mine(miner, x, labels, dtype=dtype), expected)
    if pattern == "balanced":
        assert 0 < expected.sum() < len(labels) * (len(labels) - 1), "a test that selects nothing or everything"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize(("name", "miner", "reference"), PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_pair_set_with_reference_embeddings_matches_pml(name, miner, reference, dtype):
    # A memory-like reference set: the batch itself is in it (no pair is excluded then, as in PML), plus
    # classes absent from the batch and a reference-only singleton.
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])
    ref_labels = np.concatenate([labels, [0, 1, 2, 6, 6, 7, 4, 4]])
    x = clustered(np.concatenate([labels, ref_labels]), seed=3, dtype=DTYPES[dtype])
    emb, ref = x[:len(labels)], x[len(labels):]
    ref[:len(labels)] = emb
    t = torch.tensor
    expected = pml_mask(reference()(t(emb), t(labels), t(ref), t(ref_labels)), (len(labels), len(ref_labels)))
    np.testing.assert_array_equal(mine(miner, emb, labels, ref, ref_labels, dtype=dtype), expected)


@pytest.mark.parametrize(("name", "miner", "reference"), PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_pair_mask_restricts_candidates_like_a_cross_batch_memory(name, miner, reference):
    # A ring memory of 20 slots, 14 filled; the batch sits in slots 8..13. PML's CrossBatchMemory mines against
    # the filled part and then drops the self-comparisons; ours masks the empty slots and the self-pairs up front.
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    labels = np.array([0, 0, 1, 2, 2, 3])
    ref_labels = np.concatenate([[0, 1, 1, 2, 4, 4, 3, 5], labels, np.full(6, -1)])
    x = clustered(np.concatenate([labels, np.maximum(ref_labels, 0)]), seed=8)
    emb, ref = x[:6], x[6:]
    ref[8:14] = emb
    ref[14:] = 0.0
    filled = slice(0, 14)
    t = torch.tensor
    mined = reference()(t(emb), t(labels), t(ref[filled]), t(ref_labels[filled]))
    mined = lmu.remove_self_comparisons(mined, torch.arange(8, 14), 14)
    expected = np.zeros((6, 20), bool)
    expected[:, filled] = pml_mask(mined, (6, 14))
    pair_mask = (ref_labels >= 0)[None, :] & (np.arange(20)[None, :] != np.arange(8, 14)[:, None])
    np.testing.assert_array_equal(mine(functools.partial(miner, pair_mask=pair_mask), emb, labels, ref, ref_labels),
                                  expected)


def test_batch_hard_breaks_ties_like_pml():
    # Anchor 0: positives 1, 2 and 3 with 2 and 3 equally far; negatives 4, 5 and 6 with 5 and 6 equally near.
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.0], [0.6, 0.8], [1.2, 1.6]])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    mask = mine(batch_hard_miner, x, labels)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [2, 5])
    expected = pml_mask(pml_miners.BatchHardMiner()(torch.tensor(x), torch.tensor(labels)), mask.shape)
    np.testing.assert_array_equal(mask, expected)


def test_batch_hard_triplets_are_pml_triplets():
    labels = LABEL_PATTERNS["with_singletons"]
    x = clustered(labels, seed=11)
    a, p, n = (v.numpy() for v in pml_miners.BatchHardMiner()(torch.tensor(x), torch.tensor(labels)))
    mask = mine(batch_hard_miner, x, labels)
    same = labels[:, None] == labels[None, :]
    ours = {(i, j, k) for i in range(len(labels)) for j in np.flatnonzero(mask[i] & same[i])
            for k in np.flatnonzero(mask[i] & ~same[i])}
    assert ours == set(zip(a, p, n, strict=True))
    singletons = np.bincount(labels)[labels] == 1  # no positive: PML drops them as anchors
    assert singletons.sum() == 7 and not mask[singletons].any() and (mask[~singletons].sum(axis=1) == 2).all()


def test_jit_and_memory_is_quadratic_not_cubic():
    miners = (multi_similarity_miner, pair_margin_miner, batch_hard_miner)
    x = jax.random.normal(jax.random.key(0), (1024, 128))
    labels = jnp.arange(1024) // 4
    all_masks = jax.jit(lambda e, lab: [miner(e, lab) for miner in miners])
    compiled = all_masks.lower(x, labels).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 32 * 1024 * 1024  # B M x D would be 512 MiB
    x, labels = x[:24, :8], labels[:24]
    for jitted, miner in zip(all_masks(x, labels), miners, strict=True):
        np.testing.assert_array_equal(np.asarray(jitted), np.asarray(miner(x, labels)))


@pytest.mark.parametrize("pattern", ["balanced", "with_singletons"])
def test_contrastive_loss_with_pair_margin_miner_matches_pml(pattern):
    labels = LABEL_PATTERNS[pattern]
    x = clustered(labels, seed=5, ties=False)  # coincident vectors: d = 0 in torch, sqrt(rounding) ~ 1e-8 here
    t = torch.tensor(x, requires_grad=True)
    tl = torch.tensor(labels)
    expected = pml_losses.ContrastiveLoss()(t, tl, pml_miners.PairMarginMiner()(t, tl))
    expected.backward()

    def loss(e):
        return contrastive_loss(e, jnp.asarray(labels), pair_mask=pair_margin_miner(e, jnp.asarray(labels)))

    with jax.enable_x64(True):
        value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(x))
        np.testing.assert_allclose(float(value), expected.item(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-7, atol=1e-10)


TRIPLET_CASES = [("all", 0.2), ("hard", 0.2), ("semihard", 0.2), ("easy", 0.2), ("all", 0.5), ("semihard", 0.05),
                 ("hard", -0.1)]


def selected_triplets(selection, x, labels, ref=None, ref_labels=None):
    """Reference evaluator: the (a, p, n) a TripletSelection keeps, by brute force over all B M² triplets."""
    normalise = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
    with jax.enable_x64(x.dtype == np.float64):
        d = np.asarray(euclidean_distances(jnp.asarray(normalise(x)),
                                           None if ref is None else jnp.asarray(normalise(ref))))
        ref_labels = labels if ref_labels is None else ref_labels
        pos = labels[:, None] == ref_labels[None, :]
        if ref is None:
            np.fill_diagonal(pos, False)
        neg = labels[:, None] != ref_labels[None, :]
        valid = pos[:, :, None] & neg[:, None, :]
        keep = np.asarray(selection.keep(jnp.asarray(d[:, None, :] - d[:, :, None])))
    return set(zip(*np.nonzero(valid & keep), strict=True))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize(("kind", "margin"), TRIPLET_CASES)
def test_triplet_margin_miner_selects_pml_triplets(kind, margin, pattern, dtype):
    labels = LABEL_PATTERNS[pattern]
    x = clustered(labels, seed=len(labels) + 3, dtype=DTYPES[dtype])
    selection = triplet_margin_miner(jnp.asarray(x), jnp.asarray(labels), margin=margin, type_of_triplets=kind)
    assert selection == TripletSelection(kind=kind, margin=margin)
    miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)
    a, p, n = (v.numpy() for v in miner(torch.tensor(x), torch.tensor(labels)))
    expected = set(zip(a, p, n, strict=True))
    assert selected_triplets(selection, x, labels) == expected
    if pattern == "balanced":
        assert expected, "a test that selects nothing"


@pytest.mark.parametrize(("kind", "margin"), TRIPLET_CASES[:4])
def test_triplet_margin_miner_with_reference_embeddings(kind, margin):
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])
    ref_labels = np.concatenate([labels, [0, 1, 2, 6, 6, 7, 4, 4]])
    x = clustered(np.concatenate([labels, ref_labels]), seed=3)
    emb, ref = x[:len(labels)], x[len(labels):]
    ref[:len(labels)] = emb
    t = torch.tensor
    miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)
    a, p, n = (v.numpy() for v in miner(t(emb), t(labels), t(ref), t(ref_labels)))
    selection = triplet_margin_miner(emb, labels, ref, ref_labels, margin=margin, type_of_triplets=kind)
    assert selected_triplets(selection, emb, labels, ref, ref_labels) == set(zip(a, p, n, strict=True))


@pytest.mark.parametrize(("kind", "margin"), [("all", 0.2), ("hard", 0.2), ("semihard", 0.2), ("all", 0.5)])
@pytest.mark.parametrize("with_ref", [False, True])
def test_triplet_loss_with_triplet_margin_miner_matches_pml(kind, margin, with_ref):
    labels = LABEL_PATTERNS["balanced"]
    x = clustered(labels, seed=9, ties=False)  # coincident vectors: d = 0 in torch, sqrt(rounding) ~ 1e-8 here
    t = torch.tensor(x, requires_grad=True)
    tl = torch.tensor(labels)
    ref_labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 9])
    ref = clustered(ref_labels, seed=10, ties=False)
    refs = (torch.tensor(ref), torch.tensor(ref_labels)) if with_ref else ()
    miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)
    expected = pml_losses.TripletMarginLoss()(t, tl, miner(t, tl, *refs), *refs)
    expected.backward()

    def loss(e):
        jrefs = (jnp.asarray(ref), jnp.asarray(ref_labels)) if with_ref else ()
        selection = triplet_margin_miner(e, jnp.asarray(labels), *jrefs, margin=margin, type_of_triplets=kind)
        return triplet_margin_loss(e, jnp.asarray(labels), *jrefs, triplets=selection)

    with jax.enable_x64(True):
        value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(x))
        assert expected.item() > 0
        np.testing.assert_allclose(float(value), expected.item(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-7, atol=1e-10)


def test_registry_and_jit_through_partial():
    assert set(MINERS) == {"multi_similarity", "pair_margin", "batch_hard", "triplet_margin"}
    x = jax.random.normal(jax.random.key(1), (24, 8))
    labels = jnp.arange(24) // 3
    mined = jax.jit(functools.partial(MINERS["pair_margin"], pos_margin=0.3, neg_margin=1.0))(x, labels)
    np.testing.assert_array_equal(mined, pair_margin_miner(x, labels, pos_margin=0.3, neg_margin=1.0))
    with pytest.raises(ValueError, match="kind must be"):
        triplet_margin_miner(x, labels, type_of_triplets="semi-hard")
