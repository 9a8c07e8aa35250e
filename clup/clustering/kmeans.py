"""K-means for CluP stage 1: faiss at dataset scale, scikit-learn as the reference.

The faiss backends (Johnson et al., "Billion-scale similarity search with GPUs", 2019) train
on at most `max_points_per_centroid * K` rows drawn with the seed (faiss's own convention) and
then assign every row chunk by chunk, so an [N, D] float16 memmap of millions of rows is never
held in memory as float32. faiss has no convergence test of its own: Lloyd iterations run one
at a time from the previous centroids and stop by scikit-learn's criterion (see `fit_kmeans`).
faiss has no k-means++ either: `kmeans_plusplus` seeds it, as scikit-learn seeds `KMeans`
(the reference's, altndrr/clup src/systems/utils.py:113), on a sample of the training rows.

`faiss-cpu` is a dependency. For the GPU path install a GPU build instead (conda's
`faiss-gpu`, or the `faiss-gpu-cu12` wheel); it is used whenever faiss sees a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from clup.clustering.pseudo_labels import positive_int

# torch and scikit-learn are imported where they are used: the configuration schema reads
# BACKENDS and INITS without loading them.
BACKENDS = ("auto", "faiss", "sklearn")
"""The backends to choose from (`cluster_labeler.kmeans_backend`): `auto` is the fastest
available, `faiss` its GPU build when a GPU is visible, else its CPU build."""
FAISS_BUILDS = ("faiss-cpu", "faiss-gpu")
"""What `faiss` resolves to; also accepted by name, to pin one."""
INITS = ("k-means++", "random")
"""The seedings to choose from (`cluster_labeler.kmeans_init`)."""
MAX_POINTS_PER_CENTROID = 256
INIT_POINTS_PER_CENTROID = 4
"""faiss seeds k-means++ on at most this many training rows per centre (scikit-learn's
MiniBatchKMeans seeds on 3 * K): about 1 s at K = 1000, D = 513 on 2 cores, where all
91,000 rows take 33 s (docs/scale.md, "Scale and speed")."""


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """A K-means clustering of N samples.

    assignments: [N] int64 cluster of every sample, in [0, K).
    centroids: [K, D] float32 cluster centres.
    inertia: sum over all N samples of the squared distance to their centroid (float64 sum).
    backend: the backend that ran ("faiss-cpu", "faiss-gpu" or "sklearn").
    iterations: Lloyd iterations run by the kept initialisation.
    """

    assignments: np.ndarray
    centroids: np.ndarray
    inertia: float
    backend: str
    iterations: int


@functools.cache
def _faiss() -> ModuleType | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if faiss is not None else 0


def available_backends() -> tuple[str, ...]:
    """The concrete backends this process can run, fastest first."""
    faiss = ("faiss-gpu",) * (_faiss_gpus() > 0) + ("faiss-cpu",) * (_faiss() is not None)
    return (*faiss, "sklearn")


def resolve_backend(name: str) -> str:
    """The concrete backend for `name`: "auto" is the fastest available, "faiss" its GPU
    build when a GPU is visible, else its CPU build."""
    accepted = (*BACKENDS, *FAISS_BUILDS)
    if name not in accepted:
        raise ValueError(f"backend must be one of {list(accepted)}, got {name!r}.")
    if name == "auto":
        return available_backends()[0]
    if name == "sklearn":
        return name
    if _faiss() is None:
        raise ImportError(
            f"backend {name!r} needs faiss, which is not installed: pip install faiss-cpu "
            "(or faiss-gpu-cu12 for GPUs), or use backend 'sklearn'."
        )
    if name == "faiss":
        return "faiss-gpu" if _faiss_gpus() > 0 else "faiss-cpu"
    if name == "faiss-gpu" and _faiss_gpus() == 0:
        raise ValueError(
            "backend 'faiss-gpu' needs a GPU build of faiss (conda faiss-gpu or the "
            "faiss-gpu-cu12 wheel) and a visible GPU, but faiss sees none; use 'faiss-cpu'."
        )
    return name


def fit_kmeans(
    features: Any,
    num_clusters: int,
    *,
    seed: int,
    backend: str = "auto",
    init: str = "k-means++",
    max_iter: int = 300,
    n_init: int = 1,
    tol: float = 1e-4,
    chunk_rows: int = 65536,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
    init_points_per_centroid: int = INIT_POINTS_PER_CENTROID,
    progress: bool = False,
) -> KMeansResult:
    """Cluster the rows of features [N, D] (any real dtype, a memmap included) into K clusters.

    Every backend stops a run after max_iter Lloyd iterations, or earlier once the summed
    squared shift of the centres in one iteration is at most tol times the mean per-feature
    variance of the data it trains on (scikit-learn's criterion), and keeps the lowest-inertia
    of n_init runs, each from its own start: `init="k-means++"` (greedy k-means++, Arthur and
    Vassilvitskii 2007, as scikit-learn runs it) or `"random"` (K distinct rows).
    The sklearn backend is `sklearn.cluster.KMeans` on all rows loaded as float32. faiss reads
    features in chunk_rows blocks, trains on at most max_points_per_centroid * K of them and
    seeds k-means++ on at most init_points_per_centroid * K of those. Both follow
    `torch.get_num_threads()`. Deterministic for a given seed on the CPU.
    """
    features = _check_features(features)
    num_clusters = positive_int(num_clusters, "num_clusters")
    if num_clusters > len(features):
        raise ValueError(
            f"num_clusters must be at most the number of samples ({len(features)}), "
            f"got {num_clusters}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")
    max_iter = positive_int(max_iter, "max_iter")
    n_init = positive_int(n_init, "n_init")
    chunk_rows = positive_int(chunk_rows, "chunk_rows")
    max_points_per_centroid = positive_int(max_points_per_centroid, "max_points_per_centroid")
    init_points_per_centroid = positive_int(init_points_per_centroid,
                                             "init_points_per_centroid")
    if isinstance(tol, bool) or not isinstance(tol, Real) or not 0 <= tol < float("inf"):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
    resolved = resolve_backend(backend)
    _check_finite(features, chunk_rows)

    run = _Run(features, num_clusters, int(seed), init, max_iter, n_init, float(tol),
               chunk_rows, progress)
    with _thread_limit():
        if resolved == "sklearn":
            return _fit_sklearn(run)
        return _fit_faiss(run, resolved, max_points_per_centroid, init_points_per_centroid)


def kmeans_plusplus(points: np.ndarray, num_clusters: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """K rows of points [M, D] float32 chosen by greedy k-means++ (scikit-learn's variant).

    The first row is uniform; each next one is the best of 2 + int(ln K) candidates drawn
    with probability proportional to their squared distance to the nearest row chosen so
    far, the best being the one that lowers the summed squared distances most.
    """
    trials = 2 + int(np.log(num_clusters))
    norms = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(num_clusters, dtype=np.int64)
    chosen[0] = rng.integers(len(points))
    closest = _squared_distances(points, norms, chosen[:1])[0]
    for c in range(1, num_clusters):
        cumulative = np.cumsum(closest, dtype=np.float64)
        candidates = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1])
        distances = np.minimum(_squared_distances(points, norms, candidates), closest)
        best = int(np.argmin(distances.sum(axis=1, dtype=np.float64)))
        chosen[c] = candidates[best]
        closest = distances[best]
    return points[chosen]


def _squared_distances(points: np.ndarray, norms: np.ndarray, rows: np.ndarray
                       ) -> np.ndarray:
    """[len(rows), M] squared distances from points[rows] to every point, clipped at 0."""
    distances = points[rows] @ points.T
    distances *= -2
    distances += norms[rows, None]
    distances += norms[None, :]
    return np.maximum(distances, 0, out=distances)


@dataclass(frozen=True)
class _Run:
    features: np.ndarray
    num_clusters: int
    seed: int
    init: str
    max_iter: int
    n_init: int
    tol: float
    chunk_rows: int
    progress: bool

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 rows) blocks of the features, with a progress bar if asked."""
        starts = range(0, len(self.features), self.chunk_rows)
        for start in tqdm(starts, desc="k-means assignment", unit="chunk",
                          disable=not self.progress):
            yield start, _float32(self.features[start:start + self.chunk_rows])


def _check_features(features: Any) -> np.ndarray:
    # asanyarray keeps a memmap lazy: nothing is read here.
    array = np.asanyarray(features)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"features must hold real numbers, got dtype {array.dtype}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"features must have at least one row and column, got {array.shape}.")
    return array


def _float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def _check_finite(features: np.ndarray, chunk_rows: int) -> None:
    for start in range(0, len(features), chunk_rows):
        # A value beyond float32's range becomes infinity here and is reported below.
        with np.errstate(over="ignore"):
            rows = _float32(features[start:start + chunk_rows])
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise ValueError(
                "features must be finite in float32, but row "
                f"{start + int(np.flatnonzero(bad)[0])} holds NaN, infinity or an overflow."
            )


@contextmanager
def _thread_limit() -> Iterator[None]:
    """Run on torch's thread count, so that concurrent stages do not oversubscribe cores."""
    import torch

    threads = torch.get_num_threads()
    faiss = _faiss()
    previous = faiss.omp_get_max_threads() if faiss is not None else None
    with threadpool_limits(limits=threads):
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
        try:
            yield
        finally:
            if faiss is not None:
                faiss.omp_set_num_threads(previous)


def _squared_distance_sum(rows: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    residual = centroids[labels]
    np.subtract(rows, residual, out=residual)
    return float(np.square(residual, out=residual).sum(dtype=np.float64))


def _fit_sklearn(run: _Run) -> KMeansResult:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=run.num_clusters, init=run.init, n_init=run.n_init,
                    max_iter=run.max_iter, tol=run.tol, random_state=run.seed)
    assignments = kmeans.fit_predict(_float32(run.features)).astype(np.int64)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    inertia = sum(
        _squared_distance_sum(rows, centroids, assignments[start:start + len(rows)])
        for start, rows in run.chunks()
    )
    return KMeansResult(assignments, centroids, inertia, "sklearn", int(kmeans.n_iter_))


def _fit_faiss(run: _Run, backend: str, max_points_per_centroid: int,
               init_points_per_centroid: int) -> KMeansResult:
    faiss = _faiss()
    rng = np.random.default_rng(run.seed)
    limit = run.num_clusters * max_points_per_centroid
    train = _training_rows(run.features, limit, rng)
    threshold = run.tol * _mean_variance(train, run.chunk_rows)
    index = _flat_index(faiss, train.shape[1], gpu=backend == "faiss-gpu")
    params = faiss.ClusteringParameters()
    params.niter = 1
    params.min_points_per_centroid = 1
    params.max_points_per_centroid = max_points_per_centroid
    params.check_input_data_for_NaNs = False  # checked once, chunk by chunk, by fit_kmeans
    best: KMeansResult | None = None
    for restart in range(run.n_init):
        initial = _initial_centroids(train, run, init_points_per_centroid, rng)
        centroids, iterations = _lloyd(faiss, params, index, train, initial, threshold,
                                       run, f"k-means ({backend}) {restart + 1}/{run.n_init}")
        assignments, inertia = _assign(index, centroids, run)
        if best is None or inertia < best.inertia:
            best = KMeansResult(assignments, centroids, inertia, backend, iterations)
    return best


def _initial_centroids(train: np.ndarray, run: _Run, points_per_centroid: int,
                       rng: np.random.Generator) -> np.ndarray:
    if run.init == "random":
        return train[rng.choice(len(train), size=run.num_clusters, replace=False)]
    sample = _training_rows(train, run.num_clusters * points_per_centroid, rng)
    return kmeans_plusplus(sample, run.num_clusters, rng)


def _training_rows(features: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most limit rows as float32, drawn with rng; sorted so a memmap is read in order."""
    if len(features) <= limit:
        return _float32(features)
    rows = np.sort(rng.choice(len(features), size=limit, replace=False))
    return _float32(features[rows])


def _mean_variance(train: np.ndarray, chunk_rows: int) -> float:
    """Mean over features of the per-feature variance, in two float64 passes over chunks."""
    blocks = range(0, len(train), chunk_rows)
    mean = sum(train[s:s + chunk_rows].sum(axis=0, dtype=np.float64) for s in blocks)
    mean = mean / len(train)
    centre = mean.astype(np.float32)
    squares = sum(np.square(train[s:s + chunk_rows] - centre).sum(axis=0, dtype=np.float64)
                  for s in blocks)
    return float(np.mean(squares / len(train)))


def _flat_index(faiss: ModuleType, dim: int, gpu: bool) -> Any:
    index = faiss.IndexFlatL2(dim)
    if not gpu:
        return index
    import torch

    device = torch.cuda.current_device() if torch.cuda.is_available() else 0
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, device, index)
    # The GPU index does not own its resources: keep them alive as long as the index.
    gpu_index.referenced_objects = [resources]
    return gpu_index


def _lloyd(
    faiss: ModuleType,
    params: Any,
    index: Any,
    train: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    run: _Run,
    title: str,
) -> tuple[np.ndarray, int]:
    """One faiss Lloyd iteration (assign, update, re-split empty clusters) per call, until
    the centre shift is at most threshold or max_iter is reached."""
    num_clusters, dim = centroids.shape
    with tqdm(total=run.max_iter, desc=title, unit="iter", disable=not run.progress) as bar:
        for iteration in range(1, run.max_iter + 1):
            clustering = faiss.Clustering(dim, num_clusters, params)
            faiss.copy_array_to_vector(centroids.ravel(), clustering.centroids)
            clustering.train(train, index)
            updated = faiss.vector_float_to_array(clustering.centroids).reshape(num_clusters, dim)
            shift = float(np.square(updated - centroids).sum(dtype=np.float64))
            centroids = updated
            bar.update()
            bar.set_postfix(shift=f"{shift:.3g}")
            if shift <= threshold:
                return centroids, iteration
    return centroids, run.max_iter


def _assign(index: Any, centroids: np.ndarray, run: _Run) -> tuple[np.ndarray, float]:
    """Nearest centroid of every row and the inertia, one chunk of rows at a time."""
    index.reset()
    index.add(centroids)
    assignments = np.empty(len(run.features), dtype=np.int64)
    inertia = 0.0
    for start, rows in run.chunks():
        _, nearest = index.search(rows, 1)
        labels = nearest[:, 0]
        assignments[start:start + len(rows)] = labels
        inertia += _squared_distance_sum(rows, centroids, labels)
    return assignments, inertia
