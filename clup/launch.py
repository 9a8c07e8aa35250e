"""Starting a stage process: a fresh interpreter, or a fork of one that has the training
stack imported already.

Importing torch, Lightning, torchmetrics and wandb costs a stage process about 9 s of one
core on the 2-core CPU machine (docs/scale.md); a benchmark grid starts some 60 stage
processes. On runs without GPUs whose stages are one process each, the driver therefore
starts each stage as a fork of a server process (Python's `forkserver`) that imported
`preload_modules()` once, and runs the stage's command in it as the interpreter would have. The
server does no work of its own, so nothing is forked from a process that started threads
or touched a GPU; runs with GPUs or DDP start a fresh interpreter per stage, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pkgutil
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from clup.threads import process_alive, process_start_time

THIRD_PARTY = ("torch", "torchvision", "lightning", "torchmetrics", "albumentations",
               "sklearn", "wandb", "faiss")
_server_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None
_status_lock = threading.Lock()
"""Held to start a forked stage and to read one's status. A finished stage's exit code is
read off a pipe once: two threads reading at once (a poll beside a start, which polls every
child in multiprocessing's `_cleanup`) left one with EOF, reported as exit code 255."""


WATCH_S = 1.0
WAIT_POLL_S = 0.05


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the thread that started it ends, even by
    SIGKILL of its parent (so a benchmark's runner threads live until their stages end)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _die_with_driver(pid: int, start: str | None) -> None:
    """A forked stage's parent is the server, which outlives the driver while any stage it
    forked runs: so the stage watches the driver itself and ends as the parent-death signal
    would have ended it."""
    def watch() -> None:
        while process_alive(pid, start):
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="clup-watch-driver", daemon=True).start()


def start(command: list[str], env: dict[str, str], log: Path | None, preloaded: bool
          ) -> subprocess.Popen | PreloadedProcess:
    """Run `command` with exactly `env`, its output appended to `log` (else this process's
    terminal). `preloaded`: fork it from the server, where `command` is a Python
    interpreter (`sys.executable`) running a module (`-m`) or a script."""
    if preloaded and command[0] == sys.executable and len(command) > 1:
        return PreloadedProcess(command[1:], env, log)
    output = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = log.open("ab")
    try:
        return subprocess.Popen(command, env=env, stdout=output,
                                stderr=subprocess.STDOUT if output else None,
                                preexec_fn=die_with_parent)
    finally:
        if output is not None:
            output.close()


def warm_up() -> None:
    """Start the server in the background (its imports take seconds), so that the first
    stage does not wait for them."""
    threading.Thread(target=_server_context, daemon=True).start()


def _server_context() -> multiprocessing.context.BaseContext:
    global _context
    with _server_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(preload_modules())
            from multiprocessing import forkserver

            forkserver.ensure_running()
            _context = context
        return _context


def preload_modules() -> list[str]:
    """Every module of clup and the heavy libraries it uses (those installed). All of clup,
    not only what a stage imports at its start: a stage then never imports a clup module
    later from files edited since the run started, so every stage of a run runs the code
    as it was when the run started."""
    import clup

    ours = [m.name for m in pkgutil.walk_packages(clup.__path__, "clup.")]
    return [m for m in (*THIRD_PARTY, *ours) if _importable(m)]


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class PreloadedProcess:
    """A stage forked from the server, with the part of `subprocess.Popen` the driver uses:
    `poll`, `wait`, `terminate`, `kill`, `returncode` (negative: ended by that signal)."""

    def __init__(self, arguments: list[str], env: dict[str, str], log: Path | None) -> None:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        self._process = _server_context().Process(
            target=_run, args=(arguments, env, None if log is None else str(log),
                               os.getpid(), process_start_time(os.getpid())),
            name=" ".join(arguments))
        with _status_lock:
            self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        with _status_lock:
            return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """Polls, as the status may only be read under the lock (a blocking join would hold
        it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self._process.name, timeout or 0)
            # Waits for the status to be readable, without reading it.
            multiprocessing.connection.wait([self._process.sentinel], WAIT_POLL_S)
        return code

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


def _run(arguments: list[str], env: dict[str, str], log: str | None, driver: int,
         driver_start: str | None) -> None:
    """In the forked process: become `python ARGUMENTS` run with `env`, and end with the
    driver process `driver`."""
    os.environ.clear()
    os.environ.update(env)
    if log is not None:
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.close(descriptor)
    _die_with_driver(driver, driver_start)
    if arguments[0] == "-m":
        sys.argv = [arguments[1], *arguments[2:]]
        runpy.run_module(arguments[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(arguments)
        runpy.run_path(arguments[0], run_name="__main__")
