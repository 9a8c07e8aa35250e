"""Threads follow the work: shares of one pool, members that die, a share that grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clup import threads
from clup.threads import ThreadPool, thread_share


def test_shares_are_equal_parts_the_remainder_to_the_earliest_and_never_zero() -> None:
    assert [thread_share(2, ["a", "b"], m) for m in "ab"] == [1, 1]
    assert thread_share(2, ["a"], "a") == 2
    assert [thread_share(7, ["a", "b", "c"], m) for m in "abc"] == [3, 2, 2]
    # More processes than threads: one each (the only oversubscription, one thread apiece).
    assert [thread_share(2, list("abcd"), m) for m in "abcd"] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="not among"):
        thread_share(2, ["a"], "b")


def test_a_member_that_died_without_leaving_is_ignored_and_removed(tmp_path: Path) -> None:
    pool = ThreadPool(tmp_path, total=4)
    pool.join()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "00000000000000000001-dead"
    stale.write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    # A live pid whose start time differs is a reused pid: not the member that joined.
    reused = tmp_path / "00000000000000000002-reused"
    reused.write_text(json.dumps({"pid": os.getpid(), "start": "-1"}))
    assert pool.members() == [pool.member]
    assert not stale.exists() and not reused.exists()
    assert pool.share() == 4
    pool.leave()
    assert list(tmp_path.iterdir()) == []


SIBLING = """
import sys, time
from pathlib import Path
from clup.threads import ThreadPool
pool = ThreadPool(Path(sys.argv[1]), total=2)
pool.join()
Path(sys.argv[2]).write_text("joined")
while not Path(sys.argv[3]).exists():
    time.sleep(0.05)
pool.leave()
"""


def test_a_stage_takes_the_threads_of_a_sibling_that_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes in one pool of 2 threads: one each; when the sibling leaves, the
    stage's next poll gives it both."""
    pool = tmp_path / "pool"
    joined, release = tmp_path / "joined", tmp_path / "release"
    sibling = subprocess.Popen([sys.executable, "-c", SIBLING, str(pool), str(joined),
                                str(release)])
    previous = torch.get_num_threads()
    try:
        deadline = time.monotonic() + 60
        while not joined.exists():
            assert time.monotonic() < deadline and sibling.poll() is None
            time.sleep(0.05)
        monkeypatch.setenv(threads.POOL_VARIABLE, str(pool))
        monkeypatch.setenv(threads.THREADS_VARIABLE, "2")
        monkeypatch.setattr(threads, "POLL_S", 0.0)
        with threads.sharing_threads() as share:
            assert share is not None
            assert torch.get_num_threads() == 1
            assert threads.follow_share() is None  # unchanged while the sibling runs
            release.write_text("go")
            assert sibling.wait(timeout=60) == 0
            assert threads.follow_share() == 2
            assert torch.get_num_threads() == 2
        assert list(pool.iterdir()) == []
    finally:
        release.write_text("go")
        sibling.wait(timeout=60)
        torch.set_num_threads(previous)


def test_without_a_pool_nothing_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.POOL_VARIABLE, raising=False)
    previous = torch.get_num_threads()
    with threads.sharing_threads() as share:
        assert share is None
        assert threads.follow_share(force=True) is None
    assert torch.get_num_threads() == previous
