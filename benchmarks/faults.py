"""Kill each stage at random points (SIGKILL) and check that a rerun ends where an
uninterrupted run ends, trusting no half-written file.

    .venv/bin/python benchmarks/faults.py [--experiment experiments/faults.yaml]
        [--kills 3] [--seed 0] [--output-root DIR] [KEY=VALUE ...]

First one run without faults (the reference), which also gives how long each stage's
process lives (imports included). Then, for every stage of the experiment and `--kills`
times: a fresh run is started, the stage's process is killed with SIGKILL at a time drawn
uniformly over that span (from the moment the process appears), and `clup run` is run
again until it succeeds. The run folder is then read back as the rerun left it: every
stage must be done under the reference's fingerprint, and its declared outputs must all
exist, load, and equal the reference's: byte for byte for stage 1's tables, tensor for
tensor for models (a trained stage resumed from its last epoch checkpoint may differ, since
the data order of the resumed epoch is drawn anew: such cases are counted apart, with the
accuracy change). Run it from a checkout nobody edits meanwhile: a changed setting default
changes the fingerprints.
No temporary file (`*.tmp`, `*.partial`) may be left where a later run could take it.

Prints one line per kill and a summary; exits 1 if any rerun failed or left a wrong file.
Linux only (it finds the stage processes in /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clup.config import ExperimentConfig, load_experiment
from clup.pipeline import active_stages, done_record, fingerprint
from clup.registry import STAGES, RunLayout

TEMPORARY = ("*.tmp", "*.partial", ".*.partial-*")


@dataclass
class Outcome:
    stage: str
    delay_s: float
    killed: bool
    reruns: int
    verdict: str
    """`identical`, `resumed, differs` (a trained stage resumed mid-way) or the fault."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=Path("experiments/faults.yaml"))
    parser.add_argument("--kills", type=int, default=3, help="kills per stage")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill times")
    parser.add_argument("--output-root", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    root = args.output_root or Path(tempfile.mkdtemp(prefix="clup-faults-"))
    rng = random.Random(args.seed)

    reference = _config(args, root / "reference")
    begin = time.perf_counter()
    durations = _reference_run(args, root / "reference", active_stages(reference),
                               str(reference.run_dir))
    print(f"reference run: {time.perf_counter() - begin:.1f} s, in {reference.run_dir}; "
          "each stage's process lived " + ", ".join(f"{n} {s:.1f} s"
                                                    for n, s in durations.items()))
    outcomes = []
    for name in active_stages(reference):
        for attempt in range(args.kills):
            where = root / f"kill-{name}-{attempt}"
            outcome = _kill_and_rerun(args, where, name, rng.uniform(0, durations[name]),
                                      reference)
            outcomes.append(outcome)
            print(f"{STAGES[name].title:<31} kill {attempt + 1}: at {outcome.delay_s:5.1f} s "
                  f"{'killed' if outcome.killed else 'finished first'}, {outcome.reruns} "
                  f"rerun(s): {outcome.verdict}")
    return _summary(outcomes)


def _config(args: argparse.Namespace, output_root: Path) -> ExperimentConfig:
    return load_experiment(args.experiment, [*args.overrides, f"output_root={output_root}"])


def _clup_run(args: argparse.Namespace, output_root: Path, check: bool
              ) -> subprocess.Popen[bytes] | int:
    command = [sys.executable, "-m", "clup.cli", "run", str(args.experiment),
               *args.overrides, f"output_root={output_root}"]
    if check:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return 0
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _reference_run(args: argparse.Namespace, output_root: Path, names: list[str],
                   run_dir: str) -> dict[str, float]:
    """Run without faults; return how long each stage's process lived (imports included),
    the span the kill times are drawn over."""
    driver = _clup_run(args, output_root, check=False)
    assert isinstance(driver, subprocess.Popen)
    seen: dict[str, list[float]] = {}
    while driver.poll() is None:
        now = time.monotonic()
        for name in names:
            if _stage_process(name, run_dir) is not None:
                seen.setdefault(name, [now, now])[1] = now
        time.sleep(0.05)
    if driver.returncode != 0:
        raise SystemExit(f"the reference run failed (exit code {driver.returncode})")
    return {name: last - first for name, (first, last) in seen.items()}


def _kill_and_rerun(args: argparse.Namespace, output_root: Path, name: str, delay_s: float,
                    reference: ExperimentConfig) -> Outcome:
    config = _config(args, output_root)
    driver = _clup_run(args, output_root, check=False)
    assert isinstance(driver, subprocess.Popen)
    pid = _wait_for_stage_process(driver, name, str(config.run_dir))
    killed = False
    if pid is not None:
        time.sleep(delay_s)
        killed = _kill(pid)
    driver.wait()
    leftovers = _temporary_files(config.run_dir)
    reruns = 0
    while reruns < 3:
        reruns += 1
        code = subprocess.run([sys.executable, "-m", "clup.cli", "run", str(args.experiment),
                               *args.overrides, f"output_root={output_root}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
        if code == 0:
            break
    else:
        return Outcome(name, delay_s, killed, reruns, "rerun failed 3 times")
    verdict = _compare(config, reference)
    if _temporary_files(config.run_dir):
        verdict = f"temporary files left after the rerun: {_temporary_files(config.run_dir)}"
    elif leftovers and verdict == "identical":
        verdict = "identical (the kill left temporary files, which the rerun removed)"
    return Outcome(name, delay_s, killed, reruns, verdict)


def _wait_for_stage_process(driver: subprocess.Popen[bytes], name: str, run_dir: str,
                            timeout_s: float = 600) -> int | None:
    """The pid of `clup stage NAME RUN_DIR` once it runs; None if the driver ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and driver.poll() is None:
        pid = _stage_process(name, run_dir)
        if pid is not None:
            return pid
        time.sleep(0.05)
    return None


def _stage_process(name: str, run_dir: str) -> int | None:
    """The pid of a running `clup stage NAME RUN_DIR`, if any."""
    wanted = ["stage", name, run_dir]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            return int(proc.name)
    return None


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except (OSError, ProcessLookupError):
        return False


def _temporary_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for pattern in TEMPORARY
                  for p in run_dir.rglob(pattern))


def _compare(config: ExperimentConfig, reference: ExperimentConfig) -> str:
    """Whether every stage is done under the reference's settings with the same outputs."""
    layout, ref_layout = RunLayout(config, config.run_dir), RunLayout(reference,
                                                                       reference.run_dir)
    differs = []
    for name in active_stages(config):
        if fingerprint(config, name) != fingerprint(reference, name):
            return f"{name}: other fingerprint than the reference's"
        if done_record(config, config.run_dir, name) is None:
            return f"{name}: not done after the rerun"
        for artifact, relative in STAGES[name].outputs.items():
            path, ref = layout.artifact(name, artifact), ref_layout.artifact(name, artifact)
            if not ref.exists():
                continue  # an optional output (the feature cache)
            if not path.exists():
                return f"{name}: {relative} missing after the rerun"
            if path.is_file() and not _same_file(path, ref):
                differs.append(f"{name}/{relative}")
    if not differs:
        return "identical"
    # A training stage that resumed (the one killed, or one stopped beside it) draws the
    # data order of its resumed epoch anew: it and what follows it may differ.
    resumed = {name for name in active_stages(config)
               if done_record(config, config.run_dir, name).get("attempts", 1) > 1
               and STAGES[name].section != "cluster_labeler"}
    allowed = set().union(*(_downstream(name) for name in resumed))
    change = _accuracy_change(config, reference)
    if all(d.split("/")[0] in allowed for d in differs):
        return (f"resumed {', '.join(sorted(resumed))}, differs ({', '.join(differs)}; "
                f"final accuracy {change})")
    return f"DIFFERS: {', '.join(differs)} (final accuracy {change})"


def _downstream(name: str) -> set[str]:
    found = {name}
    for other, stage in STAGES.items():
        if name in stage.upstream:
            found |= _downstream(other)
    return found


def _same_file(path: Path, ref: Path) -> bool:
    if path.suffix == ".ckpt":
        a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (path, ref))
        return _same_tree(a, b)
    if path.suffix == ".json":
        return _without_times(json.loads(path.read_text())) == _without_times(
            json.loads(ref.read_text()))
    return path.read_bytes() == ref.read_bytes()


def _same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _without_times(data: Any) -> Any:
    """JSON outputs minus what differs between identical runs: durations and speeds."""
    if isinstance(data, dict):
        return {k: _without_times(v) for k, v in data.items()
                if not any(t in k for t in ("seconds", "per_s", "time"))}
    if isinstance(data, list):
        return [_without_times(v) for v in data]
    return data


def _accuracy_change(config: ExperimentConfig, reference: ExperimentConfig) -> str:
    def accuracy(c: ExperimentConfig) -> float | None:
        results = RunLayout(c, c.run_dir).file("results")
        return json.loads(results.read_text()).get("target_accuracy") if results.is_file() \
            else None

    a, b = accuracy(config), accuracy(reference)
    if a is None or b is None:
        return "n/a"
    return f"{100 * b:.1f}% -> {100 * a:.1f}%"


def _summary(outcomes: list[Outcome]) -> int:
    killed = [o for o in outcomes if o.killed]
    identical = [o for o in killed if o.verdict.startswith("identical")]
    resumed = [o for o in killed if o.verdict.startswith("resumed")]
    failed = [o for o in outcomes if not o.verdict.startswith(("identical", "resumed"))]
    print(f"\n{len(outcomes)} kills tried, {len(killed)} hit a running stage; after the "
          f"rerun {len(identical)} identical to the reference, {len(resumed)} resumed a "
          f"trained stage and differ only downstream of it, {len(failed)} failed")
    for outcome in failed:
        print(f"  FAILED: {outcome.stage} at {outcome.delay_s:.1f} s: {outcome.verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
