"""K-means backends checked against their definitions and against each other."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from clup.clustering import kmeans as kmeans_module
from clup.clustering.kmeans import available_backends, fit_kmeans, resolve_backend

faiss = pytest.importorskip("faiss")

NUM_CLUSTERS = 20
BACKENDS = ["faiss-cpu", "sklearn"]


@functools.cache
def blobs() -> np.ndarray:
    """2000 points in 5 Gaussian blobs of 8 dimensions, so K=20 splits each blob."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(5, 8))
    points = centres[rng.integers(0, 5, size=2000)] + rng.normal(size=(2000, 8))
    return points.astype(np.float32)


@functools.cache
def fitted(backend: str, **options) -> kmeans_module.KMeansResult:
    return fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend=backend, **options)


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    points, centroids = points.astype(np.float64), centroids.astype(np.float64)
    return ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)


def assert_nearest(points: np.ndarray, result: kmeans_module.KMeansResult) -> None:
    assert result.assignments.dtype == np.int64
    assert result.assignments.shape == (len(points),)
    assert result.centroids.dtype == np.float32
    assert result.centroids.shape == (NUM_CLUSTERS, points.shape[1])
    distances = squared_distances(points, result.centroids)
    assigned = distances[np.arange(len(points)), result.assignments]
    np.testing.assert_allclose(assigned, distances.min(axis=1), rtol=1e-5, atol=1e-5)
    assert result.inertia == pytest.approx(assigned.sum(), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_gives_the_same_clustering(backend: str) -> None:
    first = fitted(backend)
    second = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend=backend)
    assert first.backend == second.backend == backend
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.inertia == second.inertia
    assert first.iterations == second.iterations


@pytest.mark.parametrize("backend", BACKENDS)
def test_assignments_are_nearest_centroids_and_inertia_is_their_distance(backend: str) -> None:
    result = fitted(backend)
    assert_nearest(blobs(), result)
    assert 1 <= result.iterations <= 300


def test_faiss_inertia_is_within_three_percent_of_sklearn() -> None:
    faiss_inertia, sklearn_inertia = fitted("faiss-cpu").inertia, fitted("sklearn").inertia
    assert abs(faiss_inertia - sklearn_inertia) <= 0.03 * sklearn_inertia


def test_other_seed_gives_another_faiss_clustering() -> None:
    other = fit_kmeans(blobs(), NUM_CLUSTERS, seed=1, backend="faiss-cpu")
    assert not np.array_equal(other.centroids, fitted("faiss-cpu").centroids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_memmap_gives_the_result_of_its_float32_values(backend: str, tmp_path) -> None:
    path = tmp_path / "features.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=blobs().shape)
    stored[:] = blobs()
    stored.flush()
    memmap = np.load(path, mmap_mode="r")
    options = {"seed": 0, "backend": backend, "max_points_per_centroid": 30, "chunk_rows": 300}
    from_memmap = fit_kmeans(memmap, NUM_CLUSTERS, **options)
    from_array = fit_kmeans(np.asarray(memmap, dtype=np.float32), NUM_CLUSTERS, **options)
    np.testing.assert_array_equal(from_memmap.assignments, from_array.assignments)
    np.testing.assert_array_equal(from_memmap.centroids, from_array.centroids)
    assert from_memmap.inertia == from_array.inertia


def test_tiny_chunks_give_the_unchunked_result() -> None:
    chunked = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu", chunk_rows=7)
    whole = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu", chunk_rows=10**6)
    np.testing.assert_array_equal(chunked.assignments, whole.assignments)
    np.testing.assert_array_equal(chunked.centroids, whole.centroids)
    assert chunked.inertia == pytest.approx(whole.inertia, rel=1e-9)


def test_subsampled_training_still_assigns_every_row_to_its_nearest_centroid() -> None:
    result = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu",
                        max_points_per_centroid=5)
    assert_nearest(blobs(), result)
    again = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu",
                       max_points_per_centroid=5)
    np.testing.assert_array_equal(result.assignments, again.assignments)
    assert not np.array_equal(result.centroids, fitted("faiss-cpu").centroids)


def test_faiss_stops_at_max_iter_or_at_sklearns_tolerance() -> None:
    assert fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu",
                      max_iter=3).iterations == 3
    assert fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu",
                      tol=1e6).iterations == 1
    # From random rows: from k-means++ starts Lloyd reaches its fixed point here as soon as
    # the default tolerance stops it.
    loose, exact = fitted("faiss-cpu", init="random"), fitted("faiss-cpu", init="random", tol=0.0)
    assert loose.iterations < exact.iterations < 300


def test_faiss_run_to_zero_tolerance_is_a_fixed_point_of_lloyd() -> None:
    result = fitted("faiss-cpu", tol=0.0)
    for k in range(NUM_CLUSTERS):
        members = blobs()[result.assignments == k]
        np.testing.assert_allclose(members.mean(axis=0), result.centroids[k], atol=1e-5)


def test_more_initialisations_never_raise_the_inertia() -> None:
    assert fitted("faiss-cpu", n_init=3).inertia <= fitted("faiss-cpu").inertia


@functools.cache
def three_blobs() -> tuple[np.ndarray, float]:
    """300 points in 3 tight blobs, two near and one far, and the inertia of their own means.

    One centre for the near pair and two for the far blob is a local minimum of Lloyd."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    points = (np.repeat(centres, 100, axis=0) + rng.normal(scale=0.1, size=(300, 2)))
    points = points.astype(np.float32)
    optimum = sum(float(np.square(block - block.mean(axis=0)).sum())
                  for block in np.split(points.astype(np.float64), 3))
    return points, optimum


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_both_inits_run_on_both_backends_deterministically(backend: str, init: str) -> None:
    result = fitted(backend, init=init, n_init=2)
    assert_nearest(blobs(), result)
    again = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend=backend, init=init, n_init=2)
    np.testing.assert_array_equal(result.assignments, again.assignments)
    np.testing.assert_array_equal(result.centroids, again.centroids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_restarts_beat_a_bad_random_start(backend: str) -> None:
    points, optimum = three_blobs()
    singles = [fit_kmeans(points, 3, seed=seed, backend=backend, init="random").inertia
               for seed in range(10)]
    assert max(singles) > 100 * optimum  # some start puts two centres in one blob
    best = fit_kmeans(points, 3, seed=0, backend=backend, init="random", n_init=30)
    assert best.inertia == pytest.approx(optimum, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_kmeans_plus_plus_start_finds_far_apart_blobs(backend: str) -> None:
    points, optimum = three_blobs()
    for seed in range(5):
        result = fit_kmeans(points, 3, seed=seed, backend=backend, init="k-means++")
        assert result.inertia == pytest.approx(optimum, rel=1e-4)


def test_faiss_restarts_keep_the_lowest_inertia_whatever_their_order(monkeypatch) -> None:
    points, optimum = three_blobs()
    good = points[[0, 100, 200]]
    bad = points[[0, 200, 201]]  # one centre for the near pair, two for the far blob

    def fit_from(*starts: np.ndarray) -> kmeans_module.KMeansResult:
        queue = list(starts)
        monkeypatch.setattr(kmeans_module, "_initial_centroids",
                            lambda *args: queue.pop(0).copy())
        return fit_kmeans(points, 3, seed=0, backend="faiss-cpu", n_init=len(starts))

    from_good, from_bad = fit_from(good), fit_from(bad)
    assert from_bad.inertia > 100 * from_good.inertia
    for order in [(bad, good, bad), (good, bad), (bad, bad, good)]:
        kept = fit_from(*order)
        assert kept.inertia == from_good.inertia
        np.testing.assert_array_equal(kept.assignments, from_good.assignments)
        np.testing.assert_array_equal(kept.centroids, from_good.centroids)


def test_kmeans_plus_plus_is_seeded_and_spreads_where_random_rows_do_not() -> None:
    points, _ = three_blobs()
    picked = kmeans_module.kmeans_plusplus(points, 3, np.random.default_rng(4))
    again = kmeans_module.kmeans_plusplus(points, 3, np.random.default_rng(4))
    np.testing.assert_array_equal(picked, again)
    other = kmeans_module.kmeans_plusplus(points, 3, np.random.default_rng(5))
    assert not np.array_equal(picked, other)
    blob_of = {tuple(row): i // 100 for i, row in enumerate(points.tolist())}
    assert sorted(blob_of[tuple(row)] for row in picked.tolist()) == [0, 1, 2]
    plusplus = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu", max_iter=1)
    rows = fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu", max_iter=1,
                      init="random")
    assert not np.array_equal(plusplus.centroids, rows.centroids)


def test_faiss_seeds_kmeans_plus_plus_on_a_sample_of_the_training_rows(monkeypatch) -> None:
    sizes = []
    original = kmeans_module.kmeans_plusplus

    def recorded(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        sizes.append(len(sample))
        return original(sample, k, rng)

    monkeypatch.setattr(kmeans_module, "kmeans_plusplus", recorded)
    fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu", n_init=2,
               init_points_per_centroid=5)
    fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu",
               init_points_per_centroid=1000)
    assert sizes == [5 * NUM_CLUSTERS, 5 * NUM_CLUSTERS, len(blobs())]


def test_as_many_clusters_as_samples_puts_each_sample_alone() -> None:
    points = blobs()[:30]
    result = fit_kmeans(points, 30, seed=0, backend="faiss-cpu")
    assert sorted(result.assignments.tolist()) == list(range(30))
    assert result.inertia == 0.0


def test_faiss_threads_follow_torch_and_are_restored(monkeypatch) -> None:
    calls = []
    original = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: (calls.append(n), original(n)))
    previous_torch = torch.get_num_threads()
    torch.set_num_threads(1)
    # torch and faiss may share one OpenMP runtime: read faiss's setting after torch's.
    previous_faiss = faiss.omp_get_max_threads()
    try:
        fit_kmeans(blobs()[:200], 4, seed=0, backend="faiss-cpu")
        assert faiss.omp_get_max_threads() == previous_faiss
    finally:
        torch.set_num_threads(previous_torch)
    assert calls == [1, previous_faiss]


def test_progress_bars_are_drawn_only_when_asked(capsys) -> None:
    fit_kmeans(blobs()[:200], 4, seed=0, backend="faiss-cpu")
    assert "k-means" not in capsys.readouterr().err
    fit_kmeans(blobs()[:200], 4, seed=0, backend="faiss-cpu", progress=True)
    err = capsys.readouterr().err
    assert "k-means (faiss-cpu) 1/1" in err
    assert "k-means assignment" in err


def test_backend_resolution(monkeypatch) -> None:
    assert available_backends()[-2:] == ("faiss-cpu", "sklearn")
    assert resolve_backend("auto") == available_backends()[0]
    assert resolve_backend("sklearn") == "sklearn"
    if faiss.get_num_gpus() == 0:
        assert resolve_backend("faiss") == "faiss-cpu"
        with pytest.raises(ValueError, match="'faiss-gpu' needs a GPU build of faiss"):
            resolve_backend("faiss-gpu")
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'cuml'"):
        resolve_backend("cuml")
    monkeypatch.setattr(kmeans_module, "_faiss", lambda: None)
    assert available_backends() == ("sklearn",)
    assert resolve_backend("auto") == "sklearn"
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        resolve_backend("faiss")
    with pytest.raises(ImportError, match="needs faiss"):
        fit_kmeans(blobs(), NUM_CLUSTERS, seed=0, backend="faiss-cpu")


def _with_bad_row(value: float, dtype: type = np.float32) -> np.ndarray:
    points = blobs()[:50].astype(dtype)
    points[37, 2] = value
    return points


@pytest.mark.parametrize(
    ("features", "options", "message"),
    [
        (np.zeros(10), {}, r"features must be a 2-D array \[N, D\], got shape \(10,\)"),
        (np.zeros((2, 3, 4)), {}, r"2-D array .* got shape \(2, 3, 4\)"),
        (np.zeros((10, 2), dtype=complex), {}, "features must hold real numbers, got dtype"),
        (np.array([["a", "b"]]), {}, "features must hold real numbers"),
        (np.zeros((0, 3)), {"num_clusters": 1}, r"at least one row and column, got \(0, 3\)"),
        (_with_bad_row(np.nan), {}, "row 37 holds NaN"),
        (_with_bad_row(np.inf, np.float16), {"chunk_rows": 16}, "row 37 holds NaN, infinity"),
        (_with_bad_row(1e39, np.float64), {}, "finite in float32, but row 37"),
        (blobs()[:10], {"num_clusters": 11},
         r"num_clusters must be at most the number of samples \(10\), got 11"),
        (blobs()[:10], {"num_clusters": 0}, "num_clusters must be a positive integer, got 0"),
        (blobs()[:10], {"seed": -1}, "seed must be a non-negative integer, got -1"),
        (blobs()[:10], {"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
        (blobs()[:10], {"max_iter": 0}, "max_iter must be a positive integer, got 0"),
        (blobs()[:10], {"n_init": 0}, "n_init must be a positive integer, got 0"),
        (blobs()[:10], {"chunk_rows": 0}, "chunk_rows must be a positive integer"),
        (blobs()[:10], {"max_points_per_centroid": 0}, "max_points_per_centroid must be"),
        (blobs()[:10], {"init_points_per_centroid": 0}, "init_points_per_centroid must be"),
        (blobs()[:10], {"init": "kmeans"}, r"init must be one of \['k-means\+\+', 'random'\], "
                                            "got 'kmeans'"),
        (blobs()[:10], {"tol": -1.0}, r"tol must be a finite number >= 0, got -1.0"),
        (blobs()[:10], {"tol": float("nan")}, "tol must be a finite number >= 0, got nan"),
        (blobs()[:10], {"backend": "cuml"}, "backend must be one of"),
    ],
)
def test_invalid_inputs_raise_value_error_saying_what_was_expected(
    features: np.ndarray, options: dict, message: str
) -> None:
    arguments = {"num_clusters": 3, "seed": 0, "backend": "faiss-cpu", **options}
    num_clusters = arguments.pop("num_clusters")
    with pytest.raises(ValueError, match=message):
        fit_kmeans(features, num_clusters, **arguments)
