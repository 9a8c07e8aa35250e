import json
import os
import signal
import sys
from pathlib import Path

from clup import launch
from clup.config import experiment_from_dict
from clup.devices import plan_devices
from clup.driver import preloads_stages
from tests.conftest import tiny_experiment

SCRIPT = """\
import json, os, sys
# Before this script imports anything: torch and every clup module, lazily imported ones too.
preloaded = all(m in sys.modules for m in ("torch", "clup.stages.swav_pretrainer",
                                           "clup.data.synthetic.generate"))
print(json.dumps({"argv": sys.argv, "env": os.environ.get("CLUP_TEST_VALUE"),
                  "home": "HOME" in os.environ, "preloaded": preloaded}))
sys.exit(int(sys.argv[1]))
"""


def test_a_preloaded_stage_runs_its_command_with_its_env_and_exit_code(tmp_path: Path) -> None:
    """Forked from the server that imported the training stack: the script finds torch and
    all of clup imported already (a run's stages run the code as it was when it started),
    sees exactly the environment given, writes to its log, and its exit code (or the
    signal that ended it) comes back as Popen's would."""
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    env = {"PATH": os.environ.get("PATH", ""), "CLUP_TEST_VALUE": "seen"}
    for preloaded in (True, False):
        log = tmp_path / f"{preloaded}" / "stage.log"
        process = launch.start([sys.executable, str(script), "3"], env, log, preloaded)
        assert isinstance(process, launch.PreloadedProcess) == preloaded
        assert process.wait(timeout=120) == 3 and process.returncode == 3
        printed = json.loads(log.read_text().strip().splitlines()[-1])
        assert printed == {"argv": [str(script), "3"], "env": "seen", "home": False,
                           "preloaded": preloaded}
    script.write_text("import time\ntime.sleep(60)\n")
    process = launch.start([sys.executable, str(script)], env, None, preloaded=True)
    assert process.poll() is None
    process.terminate()
    assert process.wait(timeout=30) == -signal.SIGTERM


def test_a_preloaded_module_command_runs_as_python_dash_m(tmp_path: Path) -> None:
    log = tmp_path / "help.log"
    process = launch.start([sys.executable, "-m", "clup.cli", "stage", "--help"],
                           dict(os.environ), log, preloaded=True)
    assert process.wait(timeout=120) == 0
    assert "run folder holding config.yaml" in log.read_text()


def test_stages_are_preloaded_only_on_the_cpu_with_one_process_each(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    cpu = plan_devices([], cpu_threads=2, thread_pool=tmp_path / "pool")
    assert preloads_stages(config, cpu)
    assert not preloads_stages(config, plan_devices(["0", "1"], cpu_threads=2))
    for runtime in ({"preload_stages": False}, {"devices": 2}, {"num_nodes": 2}):
        other = experiment_from_dict(tiny_experiment(tmp_path, runtime=runtime))
        assert not preloads_stages(other, cpu), runtime


def test_exit_codes_survive_threads_that_start_and_poll_stages_at_once(tmp_path: Path) -> None:
    """A benchmark's runner threads start and poll their stages at the same time; starting
    a process polls every other one (multiprocessing's `_cleanup`), and two reads of one
    finished stage's status pipe once gave the second reader EOF, which multiprocessing
    reports as exit code 255 for a stage that had exited 0."""
    import threading

    script = tmp_path / "quick.py"
    script.write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    codes: list[int] = []
    lock = threading.Lock()

    def runner(code: int) -> None:
        for _ in range(6):
            process = launch.start([sys.executable, str(script), str(code)], {}, None, True)
            while process.poll() is None:
                pass  # poll as fast as can be: the race needs a poll beside a start
            with lock:
                codes.append(process.returncode - code)

    threads = [threading.Thread(target=runner, args=(code,)) for code in (0, 3, 5, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert codes == [0] * 24
