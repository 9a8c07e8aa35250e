"""`clup run --launcher slurm`: every unfinished stage as a SLURM batch job, chained.

On the login node `submit` makes only the cheap checks of `clup run` (the configuration,
that dataset folders and checkpoint files are there), writes the run's `config.yaml`
and one script per unfinished stage to `<run>/slurm/<stage>.sbatch`, and submits them
with `sbatch`: stage 1 (or a baseline's adaptation) after the source model's job, SwAV
at once, stage 3 after both. The jobs prepare their datasets themselves (preparation is
locked and idempotent), so no image is read on the login node.

Each job runs `clup stage NAME RUN_DIR` under `srun`, one process per GPU, with
`CLUP_DEVICES` and `CLUP_NUM_NODES` set from the job's resources. Lightning saves the
state and requeues a job that reaches its time limit (SIGUSR1, 90 s before); the stage
resumes from its checkpoint. Rerunning the submission submits only the stages not done.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from clup.config import ExperimentConfig, dump_yaml
from clup.distributed import DEVICES_VARIABLE, NODES_VARIABLE
from clup.errors import CheckpointError, ConfigError, SlurmError
from clup.io import read_json, write_json, write_text
from clup.paths import DATA_ROOT_ENV, PREPARED_ROOT_ENV, USER_CONFIG_ENV
from clup.pipeline import active_stages, active_upstream, done_record
from clup.plan import check_inputs
from clup.registry import RUN_FILES, STAGES, RunLayout
from clup.slurm.schema import SlurmStageConfig

SLURM_DIR = "slurm"
JOBS_FILE = RUN_FILES["jobs"]
REQUEUE_SIGNAL = "SIGUSR1@90"
"""Lightning's SLURM requeue: on SIGUSR1 it saves an `hpc_ckpt_*.ckpt` and requeues."""
FORWARDED_ENV = (DATA_ROOT_ENV, PREPARED_ROOT_ENV, USER_CONFIG_ENV)
"""Where the data is, as checked at submission: the jobs read the same, whatever the
cluster's `--export` policy."""


def stage_resources(config: ExperimentConfig, name: str) -> SlurmStageConfig:
    """A stage's job resources: the `slurm` section's, with `slurm.stages.<name>` over them."""
    slurm = config.slurm
    chosen = {f.name: getattr(slurm, f.name) for f in dataclasses.fields(SlurmStageConfig)}
    if STAGES[name].gpus == "first":
        chosen.update(nodes=1, gpus_per_node=min(config.runtime.stage1_gpus,
                                                 slurm.gpus_per_node))
    override = slurm.stages.get(name)
    if override is not None:
        chosen.update({key: value for key, value in dataclasses.asdict(override).items()
                       if value is not None and key != "extra"})
        chosen["extra"] = [*slurm.extra, *override.extra]
    return SlurmStageConfig(**chosen)


def pending_stages(config: ExperimentConfig, run_dir: Path) -> list[str]:
    """The active stages not done under the current settings, each after those it waits
    for (so every job is submitted after its upstream jobs)."""
    pending = [n for n in active_stages(config) if done_record(config, run_dir, n) is None]
    ordered: list[str] = []

    def place(name: str) -> None:
        for upstream in active_upstream(config, STAGES[name]):
            if upstream in pending and upstream not in ordered:
                place(upstream)
        if name not in ordered:
            ordered.append(name)

    for name in pending:
        place(name)
    return ordered


def waits_for(config: ExperimentConfig, name: str, pending: list[str]) -> list[str]:
    """The stages whose jobs, submitted together with this one, it must wait for."""
    return [u for u in active_upstream(config, STAGES[name]) if u in pending]


def final_stages(config: ExperimentConfig) -> list[str]:
    """Stages no other stage waits for: the last of them to finish writes the results."""
    active = active_stages(config)
    return [n for n in active
            if not any(n in active_upstream(config, STAGES[m]) for m in active)]


def sbatch_scripts(config: ExperimentConfig, run_dir: Path, workdir: Path,
                   origin: str = "clup run --launcher slurm") -> dict[str, str]:
    """Stage name -> batch script, for every active stage not done yet.

    `workdir` is the folder the jobs run in (the experiment's relative paths are relative
    to it); `origin` is the command that made the scripts, quoted in them.
    """
    run_dir = workdir / run_dir
    pending = pending_stages(config, run_dir)
    return {name: _script(config, run_dir, workdir, name, waits_for(config, name, pending),
                          origin)
            for name in pending}


def _script(config: ExperimentConfig, run_dir: Path, workdir: Path, name: str,
            after: list[str], origin: str) -> str:
    stage = STAGES[name]
    resources = stage_resources(config, name)
    tasks = resources.gpus_per_node or 1
    log = run_dir / SLURM_DIR / f"{name}-%j.out"
    python = shlex.quote(config.slurm.python or sys.executable)
    layout = RunLayout(config, run_dir)
    folder = workdir / layout.stage_dir(name)
    shared = " (shared with other experiments)" if layout.shared_run(name) else ""
    waits = (f"the {' and '.join(after)} job{'s' if len(after) > 1 else ''} (sbatch "
             "--dependency=afterok, given at submission)" if after else "nothing")
    options = [
        f"--job-name=clup-{config.name}-{name}",
        f"--nodes={resources.nodes}",
        f"--ntasks-per-node={tasks}",
        *([f"--gpus-per-node={resources.gpus_per_node}"] if resources.gpus_per_node else []),
        f"--cpus-per-task={resources.cpus_per_task}",
        *([f"--mem={resources.mem}"] if resources.mem else []),
        f"--time={resources.time}",
        *([f"--partition={resources.partition}"] if resources.partition else []),
        *([f"--account={config.slurm.account}"] if config.slurm.account else []),
        *([f"--qos={resources.qos}"] if resources.qos else []),
        f"--output={log}",
        f"--error={log}",
        "--open-mode=append",
        "--requeue",
        f"--signal={REQUEUE_SIGNAL}",
        *resources.extra,
    ]
    exports = {DEVICES_VARIABLE: tasks, NODES_VARIABLE: resources.nodes,
               "CLUP_THREADS": resources.cpus_per_task}
    forwarded = [f"export {v}={shlex.quote(os.environ[v])}" for v in FORWARDED_ENV
                 if os.environ.get(v)]
    setup = (["# slurm.setup; nounset is off here, activation scripts often read unset "
              "variables", "set +u", *config.slurm.setup, "set -u", ""]
             if config.slurm.setup else [])
    results = ([f"# The last stage to finish writes {RUN_FILES['results']} and prints the "
                "results.",
                f"{python} -m clup.cli results --if-done {shlex.quote(str(run_dir))}"]
               if name in final_stages(config) else [])
    lines = [
        "#!/bin/bash",
        f"# clup: {stage.title} of experiment {config.name}, as one SLURM job.",
        f"# Written by `{origin}`, which regenerates it",
        "# and resubmits the unfinished stages when rerun (finished ones are skipped).",
        f"# Stage folder: {folder}{shared}",
        f"# Waits for: {waits}.",
        "# Near its time limit Lightning saves the stage's state and requeues the job, which",
        "# then resumes from that checkpoint; the log below is appended to.",
        *[f"#SBATCH {option}" for option in options],
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        "",
        *setup,
        "# One process per GPU (per node without GPUs); Lightning reads the ranks from srun.",
        "export " + " ".join(f"{k}={v}" for k, v in exports.items()),
        *forwarded,
        f"srun --cpus-per-task={resources.cpus_per_task} {python} -m clup.cli stage {name} "
        f"{shlex.quote(str(run_dir))}",
        *([""] if results else []),
        *results,
    ]
    return "\n".join(lines) + "\n"


def submit(config: ExperimentConfig, origin: str, dry_run: bool = False) -> dict[str, str]:
    """Check the inputs, then write and submit the unfinished stages' jobs (stage -> job id).

    A dry run prints the scripts and how each would be submitted, and writes nothing.
    """
    workdir = Path.cwd()
    run_dir = workdir / config.run_dir
    check_inputs(config)
    _check_readable(config)
    pending = pending_stages(config, run_dir)
    _check_devices(config, pending)
    scripts = sbatch_scripts(config, config.run_dir, workdir, origin)
    folder = run_dir / SLURM_DIR
    print(_describe(config, workdir, pending))
    if dry_run:
        for name, script in scripts.items():
            path = folder / f"{name}.sbatch"
            after = [f"<{u} job>" for u in waits_for(config, name, pending)]
            print(f"\n==> {path} would be written and submitted with\n"
                  f"    {' '.join(_sbatch_command(path, after))}\n")
            print(script, end="")
        print("\nDry run: nothing was written or submitted.")
        return {}
    if not pending:
        from clup.results import report_results

        report_results(config, run_dir)
        return {}
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run `clup run --launcher slurm` on a SLURM "
                         "login node, or run here without --launcher slurm")
    _check_previous_jobs(folder)
    write_text(RunLayout(config, run_dir).file("config"), dump_yaml(config))
    jobs = _submit_in_order(config, folder, scripts, pending, origin)
    print(_describe_jobs(jobs, folder, run_dir))
    return {name: record["job_id"] for name, record in jobs.items()}


def _check_readable(config: ExperimentConfig) -> None:
    for key in ("checkpoint", "pretrained"):
        path = getattr(config.source, key)
        if path and Path(path).is_file() and not os.access(path, os.R_OK):
            raise CheckpointError(f"source.{key} {path} is not readable by this user")


def _check_devices(config: ExperimentConfig, pending: list[str]) -> None:
    """A job's GPUs and `runtime.accelerator` must agree, else GPUs idle or none is there."""
    accelerator = config.runtime.accelerator
    for name in pending:
        gpus = stage_resources(config, name).gpus_per_node
        if accelerator == "cpu" and gpus:
            raise ConfigError(f"runtime.accelerator is cpu, but the {name} job would ask for "
                              f"{gpus} GPU(s) per node: set slurm.gpus_per_node=0 (or "
                              f"slurm.stages.{name}.gpus_per_node=0), or runtime.accelerator=auto")
        if accelerator == "gpu" and not gpus:
            raise ConfigError(f"runtime.accelerator is gpu, but the {name} job asks for no GPU: "
                              f"set slurm.gpus_per_node (or slurm.stages.{name}.gpus_per_node) "
                              "to 1 or more")


def _describe(config: ExperimentConfig, workdir: Path, pending: list[str]) -> str:
    run_dir = workdir / config.run_dir
    lines = [f"Experiment {config.name}: configuration valid, dataset folders and checkpoints "
             "found (the jobs prepare the datasets)",
             f"  output folder  {run_dir}", "  stages"]
    for name in active_stages(config):
        folder = workdir / RunLayout(config, run_dir).stage_dir(name)
        if name in pending:
            lines.append(f"    {STAGES[name].title:<31} {'SLURM job':<13} "
                         f"{_describe_resources(stage_resources(config, name))}  {folder}")
        else:
            lines.append(f"    {STAGES[name].title:<31} {'done, reused':<13} {folder}")
    if config.runtime.devices != "auto" or config.runtime.num_nodes != 1:
        lines.append("  runtime.devices and runtime.num_nodes are for local runs; each SLURM "
                     "job's devices and nodes are its slurm resources")
    return "\n".join(lines)


def _describe_resources(resources: SlurmStageConfig) -> str:
    gpus = resources.gpus_per_node
    nodes = f"{resources.nodes} node{'s' if resources.nodes > 1 else ''}"
    per_node = f" x {gpus} GPU{'s' if gpus > 1 else ''}" if gpus else ", no GPU"
    return f"{nodes}{per_node}, {resources.cpus_per_task} CPUs per process, {resources.time}"


def _submit_in_order(config: ExperimentConfig, folder: Path, scripts: dict[str, str],
                     pending: list[str], origin: str) -> dict[str, dict[str, Any]]:
    """Write and submit each script after the jobs it waits for; record them in jobs.json
    after every submission, so a failure part-way leaves a true record."""
    jobs: dict[str, dict[str, Any]] = {}
    for name, script in scripts.items():
        path = folder / f"{name}.sbatch"
        write_text(path, script)
        after = waits_for(config, name, pending)
        try:
            job_id, cluster = _sbatch(path, [jobs[u]["job_id"] for u in after])
        except SlurmError as err:
            if not jobs:
                raise
            ids = " ".join(record["job_id"] for record in jobs.values())
            raise SlurmError(f"{err}. Submitted before it: {', '.join(jobs)} (jobs {ids}, in "
                             f"{folder / JOBS_FILE}); cancel them (`scancel {ids}`) and rerun, "
                             "or rerun once they end") from None
        jobs[name] = {"job_id": job_id, "script": str(path), "after": after,
                      **({"cluster": cluster} if cluster else {})}
        write_json(folder / JOBS_FILE, {"command": origin, "jobs": jobs})
    return jobs


def _sbatch_command(script: Path, after: list[str]) -> list[str]:
    # A job whose upstream job failed is cancelled instead of waiting forever.
    dependency = ([f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
                  if after else [])
    return ["sbatch", "--parsable", *dependency, str(script)]


def _sbatch(script: Path, after: list[str]) -> tuple[str, str | None]:
    """Submit a script; its job id and, on a multi-cluster system, its cluster."""
    done = subprocess.run(_sbatch_command(script, after), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no message")
        raise SlurmError(f"sbatch refused {script} (exit code {done.returncode}): {said}")
    lines = done.stdout.strip().splitlines()
    job_id, _, cluster = (lines[-1] if lines else "").strip().partition(";")
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable printed {done.stdout.strip()!r} for {script}, "
                         "not a job id")
    return job_id, cluster or None


def _check_previous_jobs(folder: Path) -> None:
    """Refuse to submit while the previous submission's jobs are queued or running: they
    read the run's config.yaml, which a submission rewrites. Skipped without squeue."""
    path = folder / JOBS_FILE
    if not path.is_file() or shutil.which("squeue") is None:
        return
    jobs = read_json(path)["jobs"]
    names = {record["job_id"]: name for name, record in jobs.items()}
    done = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(names)}",
                           *_clusters(jobs)], capture_output=True, text=True, check=False)
    # squeue refuses job ids it has forgotten (ended a while ago): then none is queued.
    listed = {line.strip() for line in done.stdout.splitlines()} if done.returncode == 0 else set()
    alive = [job_id for job_id in names if job_id in listed]
    if alive:
        raise SlurmError(
            f"jobs {', '.join(f'{i} ({names[i]})' for i in alive)} of the previous submission "
            f"({path}) are still queued or running; wait for them to end or cancel them "
            f"(`scancel {' '.join(alive)}`), then rerun"
        )


def _clusters(jobs: dict[str, dict[str, Any]]) -> list[str]:
    clusters = sorted({record["cluster"] for record in jobs.values() if record.get("cluster")})
    return [f"--clusters={','.join(clusters)}"] if clusters else []


def _describe_jobs(jobs: dict[str, dict[str, Any]], folder: Path, run_dir: Path) -> str:
    lines = ["Submitted to SLURM:"]
    for name, record in jobs.items():
        after = ", ".join(STAGES[u].title for u in record["after"])
        lines.append(f"  {STAGES[name].title:<31} job {record['job_id']:<10}"
                     + (f" after {after}" if after else ""))
    ids = ",".join(record["job_id"] for record in jobs.values())
    lines += [
        f"  follow   squeue -j {ids} {' '.join(_clusters(jobs))}".rstrip(),
        f"  logs     {folder}/<stage>-<job id>.out",
        f"  record   {folder / JOBS_FILE}",
        f"  results  {run_dir / RUN_FILES['results']}, also printed at the end of the last "
        "job's log; "
        "rerun this command to resubmit what did not finish",
    ]
    return "\n".join(lines)
