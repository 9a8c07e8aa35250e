"""Stage 1 after the features at ExpW scale: k-means, purity and selection, fast vs reference.

    .venv/bin/python benchmarks/stage1.py [--n 91000 --d 513 --k 1000 --classes 7 --ratio 0.3
        --seed 0 --features FILE.npy --predictions FILE.npy --skip-sklearn --skip-loop
        --threads N --max-iter 300 --init k-means++ --n-init N --json PATH]

Each step is timed apart for each backend: k-means (faiss against scikit-learn's
`KMeans(n_clusters=K, init=..., n_init=..., random_state=seed)`, both with stage 1's default
`cluster_labeler.kmeans_init` and `kmeans_n_init` unless --init and --n-init say otherwise),
the purity table (one bincount against the reference code's K x C loops) and the per-class
selection. Without --features the features
are random unit vectors drawn with the seed and stored as a float16 memmap, as stage 1 stores
them, with random predictions over --classes classes. Random vectors have no cluster structure:
to compare k-means quality run on real stage-1 outputs, `--features features.npy
--predictions probs.npy` from a stage-1 folder (any [N, D] .npy of normalised embeddings,
memory-mapped; predictions as [N] class ids or [N, C] probabilities).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clup.clustering.kmeans import INITS, fit_kmeans, resolve_backend
from clup.clustering.pseudo_labels import (
    ClusterVotes,
    assign_pseudo_labels,
    cluster_purity,
    cluster_purity_loop,
    select_top_ratio,
)
from clup.config import ClusterLabelerConfig

BUDGET_S = 30.0
GENERATION_ROWS = 16384


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=91000, help="samples (random features only)")
    parser.add_argument("--d", type=int, default=513, help="dimension (random features only)")
    parser.add_argument("--k", type=int, default=1000, help="clusters")
    parser.add_argument("--classes", type=int, default=7, help="classes of random predictions")
    parser.add_argument("--ratio", type=float, default=0.3, help="selection ratio per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=Path, help="[N, D] .npy of stage-1 features")
    parser.add_argument("--predictions", type=Path,
                        help="[N] class ids or [N, C] probabilities (.npy)")
    parser.add_argument("--skip-sklearn", action="store_true", help="time faiss k-means only")
    parser.add_argument("--skip-loop", action="store_true", help="time the one-pass purity only")
    parser.add_argument("--threads", type=int, help="torch threads, which k-means follows")
    parser.add_argument("--max-iter", type=int, default=300,
                        help="faiss Lloyd iterations at most (sklearn keeps its default 300)")
    defaults = ClusterLabelerConfig()
    parser.add_argument("--init", choices=INITS, default=defaults.kmeans_init,
                        help="k-means start, both backends (default: stage 1's)")
    parser.add_argument("--n-init", type=int, default=defaults.kmeans_n_init,
                        help="k-means starts, the best kept, both backends (default: stage 1's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def random_features(n: int, d: int, seed: int, folder: Path) -> np.ndarray:
    """Random unit rows as a float16 .npy memmap, written block by block."""
    rng = np.random.default_rng(seed)
    path = folder / "features.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for start in range(0, n, GENERATION_ROWS):
        block = rng.standard_normal((min(GENERATION_ROWS, n - start), d), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def load_inputs(args: argparse.Namespace, folder: Path) -> tuple[np.ndarray, np.ndarray, int, str]:
    """features [N, D], predictions [N], number of classes, and where the features came from."""
    if args.features:
        features = np.load(args.features, mmap_mode="r")
        source = f"{args.features} ({features.dtype}, memory-mapped)"
    else:
        features = random_features(args.n, args.d, args.seed, folder)
        source = f"random unit vectors, seed {args.seed}, float16 memmap"
    if args.predictions:
        predictions = np.load(args.predictions)
        if predictions.ndim == 2:
            return features, predictions.argmax(axis=1), predictions.shape[1], source
        return features, predictions, max(args.classes, int(predictions.max()) + 1), source
    rng = np.random.default_rng(args.seed + 1)
    return features, rng.integers(0, args.classes, size=len(features)), args.classes, source


def timed(step: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """The step's result and its best wall time over repeat runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    return result, best


def same_votes(first: ClusterVotes, second: ClusterVotes) -> bool:
    return all(np.array_equal(getattr(first, field), getattr(second, field))
               for field in ("label", "purity", "size", "counts"))


def machine() -> dict[str, Any]:
    import faiss

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus(), "gpu": gpu}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    features, predictions, num_classes, source = load_inputs(args, folder)
    k, ratio = args.k, args.ratio
    results: dict[str, Any] = {
        "n": len(features), "d": features.shape[1], "k": k, "classes": num_classes,
        "ratio": ratio, "seed": args.seed, "features": source, "machine": machine(),
    }
    fast = resolve_backend("faiss")
    start = {"init": args.init, "n_init": args.n_init}
    kmeans, seconds = timed(lambda: fit_kmeans(features, k, seed=args.seed, backend=fast,
                                               max_iter=args.max_iter, **start))
    results["kmeans"] = {fast: {"seconds": seconds, "inertia": kmeans.inertia,
                                "iterations": kmeans.iterations, "max_iter": args.max_iter}}
    results["kmeans_start"] = start
    if not args.skip_sklearn:
        reference, seconds = timed(lambda: fit_kmeans(features, k, seed=args.seed,
                                                      backend="sklearn", **start))
        results["kmeans"]["sklearn"] = {"seconds": seconds, "inertia": reference.inertia,
                                        "iterations": reference.iterations, "max_iter": 300}
        results["kmeans"]["relative_difference"] = (
            (kmeans.inertia - reference.inertia) / reference.inertia)

    clusters = kmeans.assignments
    votes, seconds = timed(lambda: cluster_purity(clusters, predictions, k, num_classes), 5)
    results["purity"] = {"one-pass": {"seconds": seconds}}
    if not args.skip_loop:
        looped, seconds = timed(lambda: cluster_purity_loop(clusters, predictions, k,
                                                            num_classes))
        results["purity"]["loop"] = {"seconds": seconds}
        results["purity"]["identical"] = same_votes(votes, looped)

    def select() -> np.ndarray:
        pseudo_labels, purity = assign_pseudo_labels(clusters, votes)
        return select_top_ratio(pseudo_labels, purity, ratio, num_classes)

    selected, seconds = timed(select, 5)
    results["selection"] = {"seconds": seconds, "num_selected": int(selected.sum())}
    total = (results["kmeans"][fast]["seconds"] + results["purity"]["one-pass"]["seconds"]
             + seconds)
    results["fast_path"] = {"seconds": total, "budget_s": BUDGET_S, "within": total < BUDGET_S}
    return results


def _ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:,.0f}x" if fast > 0 else "-"


def report(results: dict[str, Any]) -> str:
    kmeans, purity = results["kmeans"], results["purity"]
    fast = next(iter(kmeans))
    sklearn = kmeans.get("sklearn")
    loop = purity.get("loop")
    rows = [("step", "fast", "s", "reference", "s", "ref/fast")]
    rows.append(("k-means", fast, f"{kmeans[fast]['seconds']:.3g}", "sklearn",
                 f"{sklearn['seconds']:.3g}" if sklearn else "skipped",
                 _ratio(sklearn["seconds"], kmeans[fast]["seconds"]) if sklearn else "-"))
    rows.append(("purity", "one-pass", f"{purity['one-pass']['seconds']:.3g}", "K x C loop",
                 f"{loop['seconds']:.3g}" if loop else "skipped",
                 _ratio(loop["seconds"], purity["one-pass"]["seconds"]) if loop else "-"))
    rows.append(("selection", "numpy", f"{results['selection']['seconds']:.3g}", "-", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]

    m = results["machine"]
    start = results["kmeans_start"]
    inertia = (f"k-means ({start['init']}, best of {start['n_init']}) inertia: "
               f"{fast} {kmeans[fast]['inertia']:.6g} "
               f"({kmeans[fast]['iterations']} of at most {kmeans[fast]['max_iter']} iterations)")
    if sklearn:
        inertia += (f", sklearn {sklearn['inertia']:.6g} ({sklearn['iterations']} iterations); "
                    f"{fast} relative to sklearn {kmeans['relative_difference']:+.3%}")
    identical = purity.get("identical")
    total = results["fast_path"]
    return "\n".join([
        f"stage 1 after the features: N={results['n']} D={results['d']} K={results['k']} "
        f"C={results['classes']} ratio={results['ratio']}; features: {results['features']}",
        *table,
        inertia,
        "one-pass purity equals the K x C loop (label, purity, size, counts): "
        + ("skipped" if identical is None else "yes" if identical else "NO"),
        f"selected {results['selection']['num_selected']} of {results['n']}",
        f"fast path (k-means + purity + selection): {total['seconds']:.2f} s; under "
        f"{total['budget_s']:.0f} s: {'yes' if total['within'] else 'no'}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, faiss {m['faiss']}, "
        f"GPU: {m['gpu'] or 'none'} (faiss sees {m['faiss_gpus']})",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="clup-stage1-") as folder:
        results = run(args, Path(folder))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["purity"].get("identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
