"""A finished run's results: collected from its stages' files into `results.json`, and
printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clup.config import ExperimentConfig
from clup.io import read_json, write_json
from clup.pipeline import active_stages
from clup.registry import SOURCE, STAGE1, STAGES, RunLayout
from clup.validators import VALIDATORS

METHOD_TITLES = {"clup": "CluP", "clup_plus": "CluP+", "source_only": "source only",
                 "shot": "SHOT", "nrc": "NRC", "aad": "AaD", "tent": "Tent"}


def report_results(config: ExperimentConfig, run_dir: Path,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Collect the finished stages' results into `results.json` and print them."""
    results = collect_results(config, run_dir)
    write_json(RunLayout(config, run_dir).file("results"), results)
    echo(format_results(results))
    return results


def collect_results(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    layout = RunLayout(config, run_dir)
    stage1 = read_json(layout.artifact(STAGE1, "summary"))
    source_on_target = read_json(layout.artifact(STAGE1, "source_on_target"))
    # The adapted model is the last stage's: stage 3 (CluP), adapt (a baseline), or none.
    last = [n for n in active_stages(config) if STAGES[n].adapted_model]
    adapted = read_json(layout.artifact(last[0], "metrics")) if last else source_on_target
    results: dict[str, Any] = {
        "experiment": config.name,
        "method": config.method,
        "source_on_source": _source_accuracy(config, run_dir),
        "source_on_target": source_on_target["accuracy"],
        "target_accuracy": adapted["accuracy"],
        "evaluation_note": adapted.get("note"),
        "pseudo_label_accuracy": stage1.get("pseudo_label_accuracy"),
        "selected_accuracy": stage1.get("selected_accuracy"),
        "auc_purity": stage1.get("auc_purity"),
        "auc_confidence": stage1.get("auc_confidence"),
        # Stage 1's ranking rule's own, whichever it is (clup/clustering/scores.py).
        "auc_score": stage1.get(f"auc_{config.cluster_labeler.score}"),
        "num_selected": stage1["num_selected"],
        "num_target_train": stage1["num_samples"],
        # The adapters' diagnostics (`SFDAAdapter.diagnostics`), with target labels only.
        "knn_label_agreement": adapted.get("knn_label_agreement"),
        "largest_class_share": _largest_final_share(adapted.get("class_share_per_epoch")),
        "seconds": {},
    }
    # The adapted model on the target train split (the source model's from stage 1 when
    # nothing adapted it): label-free measures, and accuracy where the split has labels.
    train_split = adapted.get("train_split") if last else stage1.get("source_train_split")
    for key in ("accuracy", *VALIDATORS):
        results[f"train_{key}"] = (train_split or {}).get(key)
    for name in active_stages(config):
        done = layout.artifact(name, "done")
        if done.is_file():
            results["seconds"][name] = read_json(done)["seconds"]
    return results


def _largest_final_share(per_epoch: dict[str, list[float]] | None) -> float | None:
    """The share of the target train split taken by the most predicted class after the last
    epoch: near 1 when an adapter collapsed onto one class."""
    if not per_epoch:
        return None
    return max(shares[-1] for shares in per_epoch.values())


def _source_accuracy(config: ExperimentConfig, run_dir: Path) -> float | None:
    if config.source.checkpoint is None:
        return read_json(RunLayout(config, run_dir).artifact(SOURCE, "metrics"))["accuracy"]
    from clup.models.checkpoint import load_classifier

    test = load_classifier(config.source.checkpoint).metadata.get("test", {})
    return test.get("accuracy")


def format_results(results: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:5.1f}%"

    gain = ""
    if results["target_accuracy"] is not None and results["source_on_target"] is not None:
        gain = f"  ({100 * (results['target_accuracy'] - results['source_on_target']):+.1f} points)"
    seconds = results["seconds"]
    title = f"{METHOD_TITLES[results['method']]} on target test"
    lines = [
        f"\nExperiment {results['experiment']}",
        f"  source model on source test    {pct(results['source_on_source'])}",
        f"  source model on target test    {pct(results['source_on_target'])}  (source only)",
        f"  {title:<31}{pct(results['target_accuracy'])}{gain}",
        f"  pseudo-labels, all train       {pct(results['pseudo_label_accuracy'])}"
        f"  (n={results['num_target_train']})",
        f"  pseudo-labels, selected        {pct(results['selected_accuracy'])}"
        f"  (n={results['num_selected']})",
        *([f"  (no target accuracy: {results['evaluation_note']})"]
          if results.get("evaluation_note") else []),
        *([f"  kNN sharing the true label     {pct(results['knn_label_agreement'])}"
           "  (at the start, diagnosis only)"]
          if results.get("knn_label_agreement") is not None else []),
        *([f"  largest class share at the end {pct(results['largest_class_share'])}"
           "  (of target train predictions)"]
          if results.get("largest_class_share") is not None else []),
        "  stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
        "  (stages needing only the source model ran at the same time; without GPUs "
        "stage2 also ran beside source)",
    ]
    return "\n".join(lines)
