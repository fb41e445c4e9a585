"""k-means (jaxdml.eval.kmeans) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from jaxdml.eval import kmeans


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_well_separated_blobs_give_sklearns_partition(seed, init):
    x, y = make_blobs(
        n_samples=600, centers=8, n_features=16, cluster_std=0.4, center_box=(-20, 20), random_state=seed
    )
    ours = kmeans(x, 8, seed=seed, init=init, n_iter=100)
    ref = KMeans(8, n_init=10, random_state=seed).fit(x)
    if init == "k-means++":  # random init can merge two blobs; k-means++ seeding must not
        assert _same_partition(ours.labels, ref.labels_)
        assert _same_partition(ours.labels, y)
        assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-4)
    assert ours.labels.shape == (600,) and ours.labels.dtype == np.int32
    assert ours.centroids.shape == (8, 16)


@pytest.mark.parametrize("k", [5, 40, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_data_inertia_close_to_sklearn(seed, k):
    x = np.random.default_rng(seed).standard_normal((2000, 12)).astype(np.float32)
    ours = kmeans(x, k, seed=seed, n_iter=300)
    ref = KMeans(k, n_init=1, random_state=seed, max_iter=300).fit(x)
    assert ours.inertia <= 1.05 * ref.inertia_
    assert ours.inertia >= 0.95 * ref.inertia_
    assert len(np.unique(ours.labels)) == k  # no empty cluster survives
    # The reported labels and inertia are consistent with the centroids (nearest centroid).
    d = ((x[:, None, :] - ours.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ours.labels, d.argmin(1))
    assert ours.inertia == pytest.approx(d.min(1).sum(), rel=1e-4)


def test_pml_like_20_iterations_on_many_small_clusters():
    """The NMI setting: k = number of classes, few points per class, 20 iterations."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 32)).astype(np.float32)
    y = rng.integers(0, 200, 1200)
    x = centres[y] + 0.3 * rng.standard_normal((1200, 32)).astype(np.float32)
    ours = kmeans(x, 200, seed=0)
    ref = KMeans(200, n_init=1, random_state=0, max_iter=20).fit(x)
    assert ours.n_iter <= 20
    assert ours.inertia <= 1.1 * ref.inertia_
    assert adjusted_rand_score(y, ours.labels) > 0.85


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_subsampled_seeding_matches_sklearn_quality(seed):
    """k > 256 (several centres per seeding round) and n > 8192 (candidates scored on a subsample)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, 16)).astype(np.float32)
    x = centres[rng.integers(0, 300, 9000)] + 0.35 * rng.standard_normal((9000, 16)).astype(np.float32)
    ours = kmeans(x, 300, seed=seed)
    ref = KMeans(300, n_init=1, random_state=seed, max_iter=20).fit(x)
    assert ours.inertia <= 1.05 * ref.inertia_
    plain = kmeans(x, 300, seed=seed, seeding_trials=1)
    assert ours.inertia < plain.inertia  # the greedy candidates help


def test_deterministic_and_seed_dependent():
    x = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    a, b = kmeans(x, 20, seed=3), kmeans(x, 20, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    c = kmeans(x, 20, seed=4)
    assert not np.array_equal(a.labels, c.labels)


def test_block_size_invariance():
    x, _ = make_blobs(n_samples=333, centers=6, n_features=5, random_state=0)
    a = kmeans(x, 6, seed=0)
    for bs in (1, 7, 100, 1000):
        b = kmeans(x, 6, seed=0, block_size=bs)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-5, atol=1e-5)


def test_empty_clusters_are_reseeded():
    # 8 distinct locations, heavily duplicated: random init picks duplicate centres, so some clusters start
    # empty; they must move onto the far points until every location has its own centre (inertia 0).
    rng = np.random.default_rng(0)
    sites = rng.standard_normal((8, 3)).astype(np.float32) * 10
    x = np.concatenate([np.repeat(sites[:3], 50, axis=0), sites[3:]])
    for seed in range(5):
        res = kmeans(x, 8, seed=seed, init="random", n_iter=50)
        assert len(np.unique(res.labels)) == 8
        assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_k_equals_n_and_k_one():
    x = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    res = kmeans(x, 40, seed=0)
    assert len(np.unique(res.labels)) == 40 and res.inertia == pytest.approx(0.0, abs=1e-6)
    one = kmeans(x, 1)
    np.testing.assert_allclose(one.centroids[0], x.mean(0), atol=1e-5)
    assert (one.labels == 0).all()


def test_zero_iterations_assigns_to_seeds():
    x = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    res = kmeans(x, 5, n_iter=0)
    assert res.n_iter == 0
    # Every seed is a data point, so each seed point has distance 0 to its own centre.
    d = ((res.centroids[:, None] - x[None]) ** 2).sum(-1)
    assert (d.min(1) < 1e-10).all()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.zeros((10, 2)), 11), {}, r"k must be an integer in \[1, n=10\]"),
        ((np.zeros((10, 2)), 0), {}, "k must be"),
        ((np.zeros(10), 2), {}, "2-D"),
        ((np.zeros((10, 2)), 2), {"init": "kmeans++"}, "init must be"),
        ((np.full((10, 2), np.nan), 2), {}, "NaN/inf"),
    ],
)
def test_bad_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans(*args, **kwargs)
