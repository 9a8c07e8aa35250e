import json
from pathlib import Path

from benchmarks import demo


def test_a_command_that_runs_no_stage_of_the_experiment_is_measured_whole(
        tiny_yaml: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`--command "make benchmark-demo"` runs a grid, not the experiment: the report has
    its wall time and utilisation over the whole run, and no stage spans or accuracies."""
    out = tmp_path / "report.json"
    assert demo.main(["--experiment", str(tiny_yaml), "--command", "sleep 0.3",
                      "--interval", "0.1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"] == "sleep 0.3" and report["stages_s"] == {}
    assert report["wall_s"] > 0 and list(report["run_utilisation"]) == ["whole run"]
    assert report["target_accuracy"] is None
    assert "none (the command ran no stage of the experiment)" in capsys.readouterr().out
