"""One configuration per run folder at a time.

Every stage process of a run reads the run's `config.yaml`. Two `clup run`s of one `name`
with different settings would overwrite each other's file, and each stage would train
under whichever settings were written last. So a run holds its folder for its whole
life: a second run with the same settings waits for it (and then finds its stages done),
one with other settings is refused. Each stage process is told the digest of the
settings its run wrote, and refuses a `config.yaml` that no longer has it (a file edited by
hand, or rewritten by a SLURM submission of the same name while its jobs were queued).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clup.errors import ConfigError
from clup.io import write_text

CONFIG_DIGEST_VARIABLE = "CLUP_CONFIG_SHA256"
"""Set by the driver for its stage processes: the SHA-256 of the `config.yaml` it wrote."""
HOLDER_WAIT_S = 5.0
"""How long to wait for a run that has just taken a folder to say which settings it has."""


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def own_run_folder(lock: Path, settings: str, echo: Callable[[str], None] = print
                   ) -> Iterator[None]:
    """Hold the run folder `lock` is in for the settings `settings` (the experiment as
    given, before the run resolves anything from its data). The kernel frees the lock when
    its holder dies, so a crashed run never keeps its folder."""
    digest = config_digest(settings)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock)
            if holder.get("settings_sha256") != digest:
                raise ConfigError(
                    f"{lock.parent} is in use by another clup run with other settings "
                    f"({_describe(holder)}); wait for it to finish, or give this run another "
                    "name (name=...)") from None
            echo(f"[clup] {lock.parent}: another clup run with the same settings is running "
                 f"({_describe(holder)}); waiting for it, then reusing what it made")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.truncate(0)
            handle.write(json.dumps({"settings_sha256": digest, "pid": os.getpid(),
                                     "host": socket.gethostname(), "since": time.time()}))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_run_config(path: Path, text: str) -> str:
    """Write the run's resolved settings, which every stage process reads; return their
    digest, for the stage processes' `CONFIG_DIGEST_VARIABLE`."""
    write_text(path, text)
    return config_digest(text)


def check_config_digest(config_file: Path) -> None:
    """In a stage process: stop if `config.yaml` is no longer what this stage's run wrote."""
    expected = os.environ.get(CONFIG_DIGEST_VARIABLE)
    if expected and config_digest(config_file.read_text()) != expected:
        raise ConfigError(f"{config_file} changed after this run started (another clup run "
                          "of the same name wrote other settings); this stage stops rather "
                          "than train under them. Rerun the experiment")


def _holder(lock: Path) -> dict[str, Any]:
    """What the run holding `lock` wrote into it; it writes just after taking the lock."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            return json.loads(lock.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.05)


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "it did not say which"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid')} on {holder.get('host')}, since {since}"
