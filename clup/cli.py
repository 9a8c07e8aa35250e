"""The `clup` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from clup.config import DatasetConfig, ExperimentConfig, dump_yaml
from clup.data.raw import DATASETS, get_dataset
from clup.errors import ClupError
from clup.registry import RUN_FILES, SOURCE, STAGES, RunLayout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clup", description="Source-free domain adaptation by cluster-level pseudo-labels."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every stage of an experiment")
    run.add_argument("experiment", type=Path, help="experiment YAML file")
    _add_overrides(run)
    run.add_argument("--dry-run", action="store_true",
                     help="check config, datasets and checkpoints, print the plan, train nothing "
                          "(with --launcher slurm: print the job scripts, submit nothing)")
    run.add_argument("--launcher", choices=("local", "slurm"), default="local",
                     help="local: run the stages here (default); slurm: submit each unfinished "
                          "stage as a SLURM job (settings under `slurm:`)")

    prepare = commands.add_parser(
        "prepare", help="crop and resize a raw dataset once into the form every stage reads"
    )
    prepare.add_argument("dataset", choices=tuple(DATASETS))
    prepare.add_argument("--root", type=Path,
                         help="the raw dataset folder (default: its folder under the data root)")
    prepare.add_argument("--out", type=Path,
                         help="output folder (default: <prepared root>/<dataset>-<size>px...)")
    prepare.add_argument("--size", type=int, default=160, help="side of the prepared crops")
    prepare.add_argument("--split-seed", type=int, default=0,
                         help="seed of ExpW's by-photo test split")
    prepare.add_argument("--workers", type=int, default=None,
                         help="processes (default: every core)")

    commands.add_parser("paths", help="show the data root and prepared root in use")

    benchmark = commands.add_parser(
        "benchmark", help="run a grid of methods x setups x seeds and tabulate target accuracy"
    )
    benchmark.add_argument("grid", type=Path, help="grid YAML (see clup/benchmark.py)")
    benchmark.add_argument("--jobs", type=int, default=None,
                           help="experiments at once (default: the grid's `jobs`, else two "
                                "on a machine without GPUs and one with GPUs)")

    source = commands.add_parser("train-source", help="train only the source model")
    source.add_argument("experiment", type=Path, help="experiment YAML file")
    _add_overrides(source)

    stage = commands.add_parser(
        "stage", help="run one stage on a run folder (what `clup run` starts per stage)"
    )
    stage.add_argument("name", choices=tuple(STAGES))
    stage.add_argument("run_dir", type=Path, help=f"run folder holding {RUN_FILES['config']}")

    results = commands.add_parser(
        "results",
        help=f"collect a finished run's results into {RUN_FILES['results']} and print them",
    )
    results.add_argument("run_dir", type=Path, help=f"run folder holding {RUN_FILES['config']}")
    results.add_argument("--if-done", action="store_true",
                         help="when a stage is not done yet, say so and exit 0 (job scripts of "
                              "stages finishing in any order use it)")
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    # A default keeps argparse from listing the optional overrides as required when the
    # experiment is missing.
    parser.add_argument("overrides", nargs="*", default=[], help="key.sub=value settings")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow flags (`clup run x.yaml --dry-run a.b=1`), which argparse's
    # positional `nargs="*"` alone does not accept.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return _dispatch(args)
    except ClupError as err:
        print(f"clup: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clup: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from clup.config import load_experiment

    if args.command == "stage":
        return _stage(args)
    if args.command == "results":
        return _results(args)
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "benchmark":
        from clup.benchmark import run_benchmark

        if args.jobs is not None and args.jobs < 1:
            raise ClupError(f"--jobs must be at least 1, got {args.jobs}")
        run_benchmark(args.grid, args.jobs)
        return 0
    if args.command == "paths":
        from clup.paths import describe

        print(describe())
        return 0
    config = load_experiment(args.experiment, args.overrides)
    if args.command == "train-source":
        return _train_source(config, args.experiment)
    if args.launcher == "slurm":
        from clup.slurm.launcher import submit

        origin = shlex.join(["clup", "run", "--launcher", "slurm", str(args.experiment),
                             *args.overrides])
        submit(config, origin, dry_run=args.dry_run)
        return 0
    from clup.devices import cpu_threads, visible_gpus
    from clup.driver import run_experiment

    if args.dry_run:
        from clup.plan import describe_plan

        print(describe_plan(config, visible_gpus(config), cpu_threads(config)))
        return 0
    run_experiment(config)
    return 0


def _stage(args: argparse.Namespace) -> int:
    from clup.config import load_experiment
    from clup.pipeline import done_record, run_stage
    from clup.run_folder import check_config_digest

    config_file = args.run_dir / RUN_FILES["config"]
    if not config_file.is_file():
        raise ClupError(f"{args.run_dir} is not a run folder: it has no {RUN_FILES['config']} "
                        "(clup run writes it)")
    check_config_digest(config_file)
    config = load_experiment(config_file)
    if done_record(config, args.run_dir, args.name) is not None:
        done = RunLayout(config, args.run_dir).artifact(args.name, "done")
        print(f"[clup] {STAGES[args.name].title}: done already under these settings ({done}); "
              "nothing to do. Remove its folder to run it again")
        return 0
    _limit_threads(config)
    run_stage(config, args.run_dir, args.name)
    return 0


def _train_source(config: ExperimentConfig, experiment: Path) -> int:
    from clup.data.datasets import check_exists, prepare_dataset
    from clup.pipeline import run_stage
    from clup.run_folder import own_run_folder, write_run_config

    if config.source.data is None:
        raise ClupError(f"{experiment}: source.data names no dataset to train on")
    config.source.checkpoint = None
    check_exists(config.source.data, "source.data")
    layout = RunLayout(config, config.run_dir)
    with own_run_folder(layout.file("owner"), dump_yaml(config)):
        write_run_config(layout.file("config"), dump_yaml(config))
        prepare_dataset(config.source.data, "source.data")
        record = run_stage(config, config.run_dir, SOURCE)
    accuracy = record["result"]["source_test_accuracy"]
    print(f"source model: {layout.artifact(SOURCE, 'model')} "
          f"(source test accuracy {'n/a' if accuracy is None else f'{100 * accuracy:.1f}%'})")
    return 0


def _results(args: argparse.Namespace) -> int:
    from clup.config import load_experiment
    from clup.pipeline import active_stages, done_record
    from clup.results import report_results

    config = load_experiment(args.run_dir / RUN_FILES["config"])
    unfinished = [STAGES[n].title for n in active_stages(config)
                  if done_record(config, args.run_dir, n) is None]
    if unfinished and args.if_done:
        print(f"[clup] results wait for: {', '.join(unfinished)}")
        return 0
    if unfinished:
        raise ClupError(f"{args.run_dir}: results need every stage done; not done yet: "
                        f"{', '.join(unfinished)}")
    report_results(config, args.run_dir)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from clup.data.datasets import prepared_dir, raw_source
    from clup.data.prepare import prepare

    # A --root given on the command line is relative to the current folder, not the data root.
    root = args.root.resolve() if args.root else Path(get_dataset(args.dataset).folder)
    dataset = DatasetConfig(kind=args.dataset, path=str(root), seed=args.split_seed,
                            prepared_size=args.size)
    reader, root = raw_source(dataset, "--root" if args.root else "the default --root")
    out = args.out or prepared_dir(dataset, "--out")
    report = prepare(reader, root, out, size=args.size, split_seed=args.split_seed,
                     workers=args.workers)
    print(report.describe(reader.title))
    print(f"manifest: {report.manifest}")
    return 0


def _limit_threads(config: ExperimentConfig) -> None:
    """Concurrent stages on one CPU share its cores instead of oversubscribing them; so do
    the processes of one stage training on several CPU devices. In a thread pool (the
    driver's on machines without GPUs) the pool sets each process's share instead."""
    from clup.threads import POOL_VARIABLE, THREADS_VARIABLE

    threads = os.environ.get(THREADS_VARIABLE)
    if threads and not os.environ.get(POOL_VARIABLE):
        import torch

        from clup.distributed import local_processes

        processes = local_processes(config.runtime) if config.runtime.accelerator == "cpu" else 1
        torch.set_num_threads(max(1, int(threads) // processes))


if __name__ == "__main__":
    sys.exit(main())
