"""The evidence for CluP+'s recipe: a grid's methods side by side on what can choose them.

    .venv/bin/python benchmarks/ablation.py lightning_logs/ablation-demo [MORE_GRIDS ...]
        [--by train_accuracy|train_im|train_neg_entropy|selected_accuracy]

Reads each grid's `benchmark.csv` (written by `clup benchmark`) and prints, per setup, one
row per method with mean ± std over seeds of: the train-split measures that may choose a
recipe (stage 1's selected pseudo-label accuracy and its score's ROC AUC on the target
train split; the adapted model's train-split accuracy and its label-free IM and negative
entropy, clup/validators.py), then target *test* accuracy, last and apart. Methods are
sorted by `--by` (default: train-split accuracy), never by test accuracy: CluP+'s
ingredients are chosen by the sort, the test column only reports them.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

CHOOSERS = ("train_accuracy", "train_im", "train_neg_entropy", "selected_accuracy")
COLUMNS = (("selected_accuracy", "stage-1 selected acc", 100), ("auc_score", "score AUC", 1),
           ("train_accuracy", "train acc", 100), ("train_im", "train IM", 1),
           ("train_neg_entropy", "train -H", 1), ("target_accuracy", "TEST acc", 100))


def _stats(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _cell(values: list[float], scale: float) -> str:
    stats = _stats([scale * v for v in values])
    if stats is None:
        return ""
    digits = 1 if scale == 100 else 3
    return f"{stats[0]:.{digits}f} ± {stats[1]:.{digits}f}"


def read_rows(grid: Path) -> list[dict[str, str]]:
    path = grid / "benchmark.csv" if grid.is_dir() else grid
    if not path.is_file():
        sys.exit(f"{path}: no benchmark.csv; run `clup benchmark` on the grid first")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def tables(rows: list[dict[str, str]], by: str) -> str:
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        key = (row["setup"], row["method"])
        seeds[key] += 1
        for column, _, _ in COLUMNS:
            if row.get(column) not in (None, ""):
                cells[key][column].append(float(row[column]))
    out = []
    for setup in dict.fromkeys(s for s, _ in cells):
        methods = [m for s, m in cells if s == setup]
        ranked = sorted(methods, key=lambda m: -(_stats(cells[(setup, m)][by]) or (-1e9,))[0])
        out += [f"\n{setup} (sorted by {by}; n = seeds)", "",
                "| method | n | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
                "|---|---|" + "---|" * len(COLUMNS)]
        for method in ranked:
            values = cells[(setup, method)]
            out.append(f"| {method} | {seeds[(setup, method)]} | " + " | ".join(
                _cell(values[column], scale) for column, _, scale in COLUMNS) + " |")
        out += ["", "How well each chooser ranks the methods' mean test accuracy (Spearman, "
                "over the methods that have both): " + ", ".join(
                    f"{chooser} {rho:+.2f}" for chooser in CHOOSERS
                    if (rho := _spearman_of(cells, setup, methods, chooser)) is not None)]
    return "\n".join(out)


def _spearman_of(cells: dict, setup: str, methods: list[str], chooser: str) -> float | None:
    pairs = [(_stats(cells[(setup, m)][chooser]), _stats(cells[(setup, m)]["target_accuracy"]))
             for m in methods]
    pairs = [(a[0], b[0]) for a, b in pairs if a is not None and b is not None]
    return spearman(*zip(*pairs, strict=True)) if len(pairs) > 2 else None


def _ranks(values: tuple[float, ...]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: tuple[float, ...], y: tuple[float, ...]) -> float | None:
    """Spearman's rank correlation: Pearson's of the ranks (ties at their mean rank)."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", type=Path)
    parser.add_argument("--by", choices=CHOOSERS, default="train_accuracy")
    args = parser.parse_args(argv)
    print(tables([row for grid in args.grids for row in read_rows(grid)], args.by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
