"""CPU threads that follow the work: the stage processes running at once share the cores.

On a machine without GPUs the driver (or a benchmark running several experiments at once)
gives every stage process the same pool folder (`CLUP_THREAD_POOL`) and the machine's thread
count (`CLUP_THREADS`). A stage process joins the pool when it starts its work (not while it
waits for a lock) and leaves it when done; while it trains it re-reads the pool every
`POLL_S` seconds and sets `torch.set_num_threads` to its share, so when a concurrent stage
ends the others take its threads at their next batch. Shares never add up to more than the
threads (one per process at least), so the cores are never oversubscribed beyond one
thread per running process. A member that died without leaving is recognised by its pid
and start time and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

POOL_VARIABLE = "CLUP_THREAD_POOL"
THREADS_VARIABLE = "CLUP_THREADS"
POLL_S = 1.0


def thread_share(total: int, members: list[str], member: str) -> int:
    """`member`'s share of `total` threads among `members` (in joining order): equal parts,
    the remainder to the earliest members, at least one each."""
    if member not in members:
        raise ValueError(f"{member!r} is not among the pool's members {members}")
    base, extra = divmod(max(total, 1), len(members))
    return max(1, base + (members.index(member) < extra))


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or process_start_time(pid) in (None, start)


class ThreadPool:
    """One pool folder: a file per member process, named so that names sort by joining time."""

    def __init__(self, folder: Path, total: int) -> None:
        self.folder = Path(folder)
        self.total = max(1, int(total))
        self.member: str | None = None

    def join(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.member = f"{time.time_ns():020d}-{pid}"
        record = {"pid": pid, "start": process_start_time(pid)}
        partial = self.folder / f".{self.member}.partial"
        partial.write_text(json.dumps(record))
        os.replace(partial, self.folder / self.member)

    def leave(self) -> None:
        if self.member is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / self.member).unlink()
            self.member = None

    def members(self) -> list[str]:
        """Live members in joining order; files of members that died are removed."""
        live = []
        for path in sorted(self.folder.glob("[0-9]*")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # just left, or another process is replacing it
            if path.name == self.member or process_alive(record["pid"], record.get("start")):
                live.append(path.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return live

    def share(self) -> int:
        if self.member is None:
            raise RuntimeError("join the thread pool before asking for a share")
        members = self.members()
        if self.member not in members:  # its file was removed by hand: join again
            self.join()
            members = self.members()
        return thread_share(self.total, members, self.member)


_joined: ThreadPool | None = None
_last_poll = 0.0


def pool_from_environment() -> ThreadPool | None:
    folder = os.environ.get(POOL_VARIABLE)
    if not folder:
        return None
    return ThreadPool(Path(folder), int(os.environ.get(THREADS_VARIABLE) or os.cpu_count() or 1))


@contextlib.contextmanager
def sharing_threads() -> Iterator[ThreadPool | None]:
    """Join the environment's pool (if any) for the duration of a stage's work."""
    global _joined
    pool = pool_from_environment()
    if pool is None:
        yield None
        return
    pool.join()
    _joined = pool
    try:
        follow_share(force=True)
        yield pool
    finally:
        _joined = None
        pool.leave()


def follow_share(force: bool = False) -> int | None:
    """Set torch's thread count to this process's current share (at most every `POLL_S`).

    Returns the new count when it changed, else None. Outside a pool it does nothing.
    """
    global _last_poll
    if _joined is None or (not force and time.monotonic() - _last_poll < POLL_S):
        return None
    _last_poll = time.monotonic()
    import torch

    share = _joined.share()
    if share == torch.get_num_threads():
        return None
    torch.set_num_threads(share)
    return share
