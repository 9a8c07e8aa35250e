"""The `clup` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clup.errors import ClupError

STAGE_NAMES = ("source", "stage1", "stage2", "stage3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clup", description="Source-free domain adaptation by cluster-level pseudo-labels."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every stage of an experiment")
    run.add_argument("experiment", type=Path, help="experiment YAML")
    run.add_argument("overrides", nargs="*", help="key.sub=value settings")

    source = commands.add_parser("train-source", help="train only the source model")
    source.add_argument("experiment", type=Path, help="experiment YAML")
    source.add_argument("overrides", nargs="*", help="key.sub=value settings")

    stage = commands.add_parser(
        "stage", help="run one stage on a run folder (what `clup run` starts per stage)"
    )
    stage.add_argument("name", choices=STAGE_NAMES)
    stage.add_argument("run_dir", type=Path, help="run folder holding config.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ClupError as err:
        print(f"clup: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clup: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from clup.config import dump_yaml, load_experiment
    from clup.io import write_text

    if args.command == "stage":
        _limit_threads()
        from clup.pipeline import run_stage

        config = load_experiment(args.run_dir / "config.yaml")
        run_stage(config, args.run_dir, args.name)
        return 0
    config = load_experiment(args.experiment, args.overrides)
    if args.command == "train-source":
        from clup.pipeline import run_stage

        if config.source.data is None:
            raise ClupError(f"{args.experiment}: source.data names no dataset to train on")
        config.source.checkpoint = None
        config.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(config.run_dir / "config.yaml", dump_yaml(config))
        record = run_stage(config, config.run_dir, "source")
        print(f"source model: {config.run_dir / 'source' / 'model.ckpt'} "
              f"(source test accuracy {record['result']['source_test_accuracy']})")
        return 0
    from clup.driver import run_experiment

    run_experiment(config)
    return 0


def _limit_threads() -> None:
    """Concurrent stages on one CPU share its cores instead of oversubscribing them."""
    threads = os.environ.get("CLUP_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


if __name__ == "__main__":
    sys.exit(main())
