"""Bad input a user can give: each stops with one sentence naming what is at fault."""

from pathlib import Path

import pytest
import torch

from clup.cli import main
from clup.config import BackboneConfig, PreprocessingConfig, load_experiment
from clup.config.loader import apply_override
from clup.errors import CheckpointError, ConfigError
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier, load_classifier, save_classifier
from clup.plan import check_inputs
from tests.conftest import tiny_experiment, write_experiment

CLASSES = ["a", "b", "c"]
SMALL = BackboneConfig("small_cnn", width=4)


def _lines(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_key_given_twice_names_the_file_and_both_lines(tmp_path: Path) -> None:
    path = _lines(tmp_path / "twice.yaml", "name: a\nseed: 1\nname: b\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(err.value) == (f"{path}: key 'name' is given on line 1 and again on line 3, "
                              "and YAML would keep only the last; keep one of them")


def test_a_nested_key_given_twice_in_a_base_file_is_refused(tmp_path: Path) -> None:
    _lines(tmp_path / "base.yaml", "swav:\n  epochs: 3\n  batch_size: 16\n  epochs: 4\n")
    experiment = tiny_experiment(tmp_path)
    experiment["extends"] = "base.yaml"
    path = write_experiment(tmp_path / "top.yaml", experiment)
    with pytest.raises(ConfigError, match=r"base.yaml: key 'epochs' is given on line 2 and "
                                          r"again on line 4"):
        load_experiment(path)


def test_a_section_given_twice_is_refused(tmp_path: Path) -> None:
    path = _lines(tmp_path / "twice.yaml", "swav:\n  epochs: 3\nseed: 0\nswav:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="key 'swav' is given on line 1 and again on line 4"):
        load_experiment(path)


def test_merge_keys_may_still_override_what_they_merge(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    del experiment["swav"], experiment["finetune"]
    path = write_experiment(tmp_path / "tiny.yaml", experiment)
    path.write_text(path.read_text() + "swav: &loop\n  epochs: 2\n  batch_size: 16\n"
                    "finetune:\n  <<: *loop\n  epochs: 5\n")
    config = load_experiment(path)
    assert (config.finetune.epochs, config.finetune.batch_size) == (5, 16)
    raw: dict = {}
    apply_override(raw, "a={<<: {x: 1, y: 2}, x: 3}")
    assert raw["a"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("text", ["5e-4", "5E-4", "1e-3", "+2e+3", "1.5e3", ".5e1"])
def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path: Path, text: str) -> None:
    experiment = tiny_experiment(tmp_path)
    experiment["finetune"]["optimizer"] = {"lr": "LR"}
    path = write_experiment(tmp_path / "tiny.yaml", experiment)
    path.write_text(path.read_text().replace("LR", text).replace("'", ""))
    assert load_experiment(path).finetune.optimizer.lr == float(text)
    config = load_experiment(tmp_path / "tiny.yaml", [f"source.optimizer.lr={text}"])
    assert config.source.optimizer.lr == float(text)


@pytest.mark.parametrize(("text", "value"), [
    ("10", 10), ("-3", -3), ("1_000", 1000), ("0.5", 0.5), ("e5", "e5"), ("1e", "1e"),
    ("1.2.3", "1.2.3"), ("1e-3x", "1e-3x"), ("1e3", 1000.0), ("-2e+3", -2000.0),
])
def test_ints_stay_ints_and_strings_stay_strings(text: str, value: object) -> None:
    raw: dict = {}
    apply_override(raw, f"a={text}")
    assert raw["a"] == value and type(raw["a"]) is type(value)


def test_clup_run_without_an_experiment_names_only_it(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--dry-run"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: experiment\n" in err


def test_a_folder_as_the_experiment_file_is_called_a_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("b.yaml", "a.yaml", "notes.txt"):
        (tmp_path / name).write_text("")
    assert main(["run", str(tmp_path), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"clup: error: {tmp_path} is a folder, not a YAML file; name one of the YAML "
        "files in it: a.yaml, b.yaml\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="empty is a folder, not a YAML file, and holds no "
                                          ".yaml file"):
        load_experiment(empty)


@pytest.mark.parametrize("key", ["name", "swav.run_name", "source.run_name",
                                 "cluster_labeler.run_name"])
def test_an_over_long_folder_name_is_refused(tiny_yaml: Path, key: str) -> None:
    assert load_experiment(tiny_yaml, [f"{key}={'n' * 255}"])
    with pytest.raises(ConfigError, match=f"{key} is 300 bytes long, but a file name may be at "
                                          "most 255 bytes on common file systems"):
        load_experiment(tiny_yaml, [f"{key}={'n' * 300}"])
    with pytest.raises(ConfigError, match=f"{key} is 258 bytes long"):
        load_experiment(tiny_yaml, [f"{key}={'é' * 129}"])


def _saved(path: Path, classes: list[str] = CLASSES) -> dict:
    torch.manual_seed(0)
    model = Classifier(build_backbone(SMALL), len(classes))
    save_classifier(path, model, classes, SMALL, PreprocessingConfig(image_size=16))
    return torch.load(path, weights_only=True)


def test_head_rows_that_do_not_match_the_classes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    data = _saved(path)
    data["classes"] = [*CLASSES, "d"]
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    message = str(err.value)
    assert message.startswith(f"{path}: its weights do not fit the model its own settings "
                              "describe (4 classes, a linear head, backbone {'name': 'small_cnn'")
    assert "head.weight (3, 32) vs (4, 32)" in message and "head.bias (3,) vs (4,)" in message


def test_a_backbone_width_that_does_not_match_the_weights_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    data = _saved(path)
    data["backbone"]["width"] = 8
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    assert "'width': 8" in str(err.value)
    assert "shape mismatches (file vs model) [backbone.body.0.weight (4, 3, 3, 3) vs " \
        "(8, 3, 3, 3)" in str(err.value)


@pytest.mark.parametrize("key", ["backbone", "state_dict", "classes", "preprocessing"])
def test_a_missing_key_is_named(tmp_path: Path, key: str) -> None:
    path = tmp_path / "model.ckpt"
    data = _saved(path)
    del data[key]
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    assert str(err.value) == (f"{path} lacks the key '{key}' that every clup-classifier/1 "
                              "checkpoint holds")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("classes", "abc", "classes must be a list of names, got 'abc'"),
    ("state_dict", [1], "state_dict must map names to tensors"),
    ("backbone", {"name": "vgg"}, "backbone.name must be one of"),
    ("backbone", 3, "backbone must be a mapping"),
])
def test_malformed_settings_name_the_file(tmp_path: Path, key: str, value: object,
                                          message: str) -> None:
    path = tmp_path / "model.ckpt"
    data = _saved(path)
    data[key] = value
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


class Payload:
    """Unpickling it would run code from the file."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize(("content", "reason"), [
    (b"not a checkpoint", "(not a file torch.save wrote: UnpicklingError)"),
    (b"", "(not a file torch.save wrote: EOFError)"),
    (None, "(it holds Python objects besides tensors, which clup never unpickles)"),
])
def test_unreadable_files_are_told_in_one_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
        reason: str) -> None:
    path = tmp_path / "model.ckpt"
    if content is None:
        torch.save({"format": "clup-classifier/1", "payload": Payload()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    assert str(err.value) == f"{path} is not a readable clup checkpoint {reason}"
    assert "code ran" not in capsys.readouterr().out


def _with_checkpoint(tmp_path: Path, checkpoint: Path) -> Path:
    experiment = tiny_experiment(tmp_path)
    experiment["source"] = {"checkpoint": str(checkpoint)}
    return write_experiment(tmp_path / "tiny.yaml", experiment)


def test_a_matching_checkpoint_passes_the_input_check(tmp_path: Path) -> None:
    from clup.data.classes import CANONICAL_CLASSES

    _saved(tmp_path / "model.ckpt", list(CANONICAL_CLASSES))
    check_inputs(load_experiment(_with_checkpoint(tmp_path, tmp_path / "model.ckpt")))


@pytest.mark.parametrize(("kind", "message"), [
    ("classes", "model.ckpt has the classes ['a', 'b', 'c'], the experiment ['Surprise'"),
    ("random", "model.ckpt is not a readable clup checkpoint (not a file torch.save wrote"),
    ("shape", "model.ckpt: its weights do not fit the model its own settings describe"),
])
def test_clup_run_checks_the_source_checkpoint_before_any_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        kind: str, message: str) -> None:
    import clup.driver

    def no_stage(*args: object) -> None:
        raise AssertionError("a stage started")

    monkeypatch.setattr(clup.driver, "run_stages", no_stage)
    checkpoint = tmp_path / "model.ckpt"
    if kind == "random":
        checkpoint.write_bytes(bytes(range(256)) * 4)
    else:
        data = _saved(checkpoint)
        if kind == "shape":
            data["classes"] = list(load_experiment(_with_checkpoint(tmp_path, checkpoint)).classes)
            torch.save(data, checkpoint)
    assert main(["run", str(_with_checkpoint(tmp_path, checkpoint))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
