"""Where `make demo`'s time goes: each stage's wall time and how busy the machine's cores were.

Runs `clup run EXPERIMENT` (default `experiments/demo.yaml`) in a fresh run folder, samples
`/proc/stat` every `--interval` seconds while it runs, then prints:
- the run's wall time and each stage's span (from its `started.json` to its `done.json`);
- the CPU utilisation over the whole run and within each phase (the source model, the
  concurrent stages while all of them run, after the first of them ends, stage 3), twice:
  of the run's own processes (the CPU time of the driver and its stage processes over
  wall time x cores, blind to anything else running) and of the whole machine;
- the target accuracies the run reported.
With `--plot` it draws the utilisation over time with the stage spans under it, so an idle
core is a gap one can see. The datasets are rendered once and reused (their paths are the
experiment's); only the run folder is new.

    .venv/bin/python benchmarks/demo.py [--experiment experiments/demo.yaml]
        [--output-root DIR] [--interval 0.5] [--plot cpu.png] [--json out.json] [KEY=VALUE ...]
    .venv/bin/python benchmarks/demo.py --command "make demo" --plot cpu.png

With `--command` it measures that command instead (it must run the experiment into its
own run folder, `lightning_logs/demo` for `make demo`, which must not exist yet).

Linux only (it reads /proc). The run's own utilisation is the figure to quote; the
machine's counts every process and is only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clup.config import load_experiment
from clup.io import read_json
from clup.pipeline import active_stages
from clup.registry import STAGES, stage_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/demo.yaml"))
    parser.add_argument("--output-root", type=Path,
                        help="where the fresh run folder goes (default: a new folder under "
                             "lightning_logs/demo-benchmark/)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--plot", type=Path, help="write the utilisation timeline here (PNG)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--command", help="measure this shell command (e.g. 'make demo'), "
                                          "which runs the experiment in its own run folder")
    parser.add_argument("overrides", nargs="*", help="key.sub=value settings for the run")
    return parser.parse_args(argv)


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and all its live descendants, each with the children it has
    reaped (a child's time moves into its parent's once reaped, so nothing counts twice)."""
    parents, totals = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        totals[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(totals.get(pid, 0) for pid in tree) / TICKS


def read_cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each core, from /proc/stat."""
    cores = []
    with open("/proc/stat") as handle:
        for line in handle:
            name, *values = line.split()
            if not (name.startswith("cpu") and name != "cpu"):
                continue
            ticks = [int(v) for v in values]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            cores.append((sum(ticks) - idle, sum(ticks)))
    return cores


@dataclass
class CpuSampler:
    """Samples each core's utilisation in a background thread."""

    interval: float
    root: int | None = None
    times: list[float] = field(default_factory=list)
    busy: list[list[float]] = field(default_factory=list)  # per sample, per core, 0..1
    run_busy: list[float] = field(default_factory=list)  # per sample, the run's share, 0..1
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        previous, then = read_cpu_times(), time.time()
        run_previous = process_cpu_seconds(self.root) if self.root else 0.0
        while not self._stop.wait(self.interval):
            current, now = read_cpu_times(), time.time()
            run_current = process_cpu_seconds(self.root) if self.root else 0.0
            self.times.append(now)
            self.busy.append([(b1 - b0) / max(t1 - t0, 1)
                              for (b0, t0), (b1, t1) in zip(previous, current, strict=True)])
            self.run_busy.append(max(0.0, run_current - run_previous)
                                 / (max(now - then, 1e-9) * len(current)))
            previous, then, run_previous = current, now, run_current

    def utilisation(self, start: float, end: float, run: bool = False) -> float | None:
        """Mean share of all cores busy between two wall-clock times: of the run's
        processes (`run`) or of the whole machine."""
        shares = self.run_busy if run else [sum(c) / len(c) for c in self.busy]
        rows = [v for t, v in zip(self.times, shares, strict=True) if start < t <= end]
        return sum(rows) / len(rows) if rows else None


def stage_spans(run_dir: Path) -> dict[str, tuple[float, float]]:
    """(start, end) wall-clock times of each stage this run trained (not reused)."""
    config = load_experiment(run_dir / "config.yaml")
    spans = {}
    for name in active_stages(config):
        folder = stage_dir(config, run_dir, name)
        started, done = folder / "started.json", folder / "done.json"
        if started.is_file() and done.is_file():
            spans[name] = (started.stat().st_mtime, done.stat().st_mtime)
    return spans


def phases(spans: dict[str, tuple[float, float]], begin: float, end: float
           ) -> dict[str, tuple[float, float]]:
    """The run cut where the machine's work changes: source model, all concurrent stages,
    the concurrent stages left after the first ends, stage 3."""
    out: dict[str, tuple[float, float]] = {"whole run": (begin, end)}
    if "source" in spans:
        out["source model"] = spans["source"]
    concurrent = [spans[n] for n in ("stage1", "stage2", "adapt") if n in spans]
    if len(concurrent) > 1:
        first_end = min(e for _, e in concurrent)
        out["concurrent stages, all running"] = (max(s for s, _ in concurrent), first_end)
        out["concurrent stages, after the first ended"] = (first_end,
                                                           max(e for _, e in concurrent))
    elif concurrent:
        out["concurrent stage"] = concurrent[0]
    if "stage3" in spans:
        out["stage 3"] = spans["stage3"]
    return out


def plot(path: Path, sampler: CpuSampler, spans: dict[str, tuple[float, float]],
         begin: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})
    x = [t - begin for t in sampler.times]
    cores = len(sampler.busy[0]) if sampler.busy else 1
    top.fill_between(x, [100 * sum(c) for c in sampler.busy], color="0.85",
                     label="the whole machine")
    top.plot(x, [100 * cores * v for v in sampler.run_busy], color="tab:blue",
             label="the run's processes")
    top.set_ylim(0, 100 * cores * 1.05)
    top.set_ylabel("busy, % of one core")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title)
    for row, (name, (start, end)) in enumerate(spans.items()):
        bottom.barh(row, end - start, left=start - begin, height=0.6)
        bottom.text(end - begin + 2, row, f"{STAGES[name].title} {end - start:.0f} s",
                    va="center", fontsize=8)
    bottom.set_yticks([])
    bottom.invert_yaxis()
    bottom.set_xlabel("seconds since the run started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command:
        overrides = list(args.overrides)
        command: str | list[str] = args.command
    else:
        root = args.output_root or Path(tempfile.mkdtemp(
            prefix=time.strftime("%Y%m%d-%H%M%S-"),
            dir=_made(Path("lightning_logs/demo-benchmark"))))
        overrides = [f"output_root={root}", *args.overrides]
        command = [sys.executable, "-m", "clup.cli", "run", str(args.experiment), *overrides]
    config = load_experiment(args.experiment, overrides)
    if config.run_dir.exists():
        raise SystemExit(f"{config.run_dir} exists: measure a fresh run (another "
                         "--output-root, or remove it)")
    print(f"[demo benchmark] {command if args.command else ' '.join(command)}", flush=True)
    begin = time.time()
    process = subprocess.Popen(command, shell=bool(args.command))
    sampler = CpuSampler(args.interval, root=process.pid)
    sampler.start()
    code = process.wait()
    end = time.time()
    sampler.stop()
    if code != 0:
        print(f"[demo benchmark] the run failed (exit code {code})", file=sys.stderr)
        return code
    # A command that ran something else (`make benchmark-demo`, say) has no stages of the
    # experiment to cut the run at: its wall time and utilisation are over the whole run.
    ran_experiment = (config.run_dir / "results.json").is_file()
    spans = stage_spans(config.run_dir) if ran_experiment else {}
    results = read_json(config.run_dir / "results.json") if ran_experiment else {}
    report = {
        "experiment": str(args.experiment), "command": args.command,
        "overrides": args.overrides,
        "run_dir": str(config.run_dir), "wall_s": round(end - begin, 1),
        "machine": {"cores": len(read_cpu_times()), "processor": _processor(),
                    "python": platform.python_version()},
        "stages_s": {n: round(e - s, 1) for n, (s, e) in spans.items()},
        "run_utilisation": _utilisation(sampler, spans, begin, end, run=True),
        "machine_utilisation": _utilisation(sampler, spans, begin, end, run=False),
        **{key: results.get(key) for key in ("source_on_target", "target_accuracy",
                                             "selected_accuracy", "num_selected")},
    }
    print(describe(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(args.plot, sampler, spans, begin,
             f"{args.command or args.experiment.name}: {report['wall_s']:.0f} s on "
             f"{report['machine']['cores']}"
             f" cores, the run kept {100 * (report['run_utilisation']['whole run'] or 0):.0f}%"
             " of them busy")
        print(f"[demo benchmark] plot: {args.plot}")
    return 0


def _utilisation(sampler: CpuSampler, spans: dict[str, tuple[float, float]], begin: float,
                 end: float, run: bool) -> dict[str, float | None]:
    return {name: None if (u := sampler.utilisation(s, e, run)) is None else round(u, 3)
            for name, (s, e) in phases(spans, begin, end).items()}


def describe(report: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    what = report["command"] or report["experiment"]
    lines = [f"\n{what}: {report['wall_s']:.1f} s wall, "
             f"{report['machine']['cores']} cores ({report['machine']['processor']})",
             "stage spans: " + (", ".join(f"{n} {s:.1f} s" for n, s in report["stages_s"].items())
                                or "none (the command ran no stage of the experiment)"),
             f"CPU utilisation (busy share of all cores){'':<10} the run's  the machine's"]
    machine = report["machine_utilisation"]
    lines += [f"  {name:<42} {pct(value):>10}  {pct(machine[name]):>13}"
              for name, value in report["run_utilisation"].items()]
    if report["target_accuracy"] is not None:
        lines.append(f"target test accuracy: source only {pct(report['source_on_target'])}, "
                     f"adapted {pct(report['target_accuracy'])}; selected pseudo-labels "
                     f"{pct(report['selected_accuracy'])} of {report['num_selected']}")
    return "\n".join(lines)


def _processor() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
