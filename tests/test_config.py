from pathlib import Path

import pytest

from clup.config import ConfigError, dump_yaml, experiment_from_dict, load_experiment
from tests.conftest import tiny_experiment, write_experiment

EXPERIMENTS = sorted(Path(__file__).parents[1].joinpath("experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiments_load(path: Path) -> None:
    config = load_experiment(path)
    assert config.name


def test_overrides_apply_with_yaml_types(tiny_yaml: Path) -> None:
    config = load_experiment(tiny_yaml, ["cluster_labeler.selection_ratio=0.25",
                                         "swav.epochs=3", "source.checkpoint=null"])
    assert config.cluster_labeler.selection_ratio == 0.25
    assert config.swav.epochs == 3


def test_round_trip_through_yaml(tmp_path: Path, tiny_yaml: Path) -> None:
    config = load_experiment(tiny_yaml)
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(config))
    assert load_experiment(again) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster_labeler.num_clusterz=5", "unknown key cluster_labeler.num_clusterz (did you "
                                           "mean cluster_labeler.num_clusters?)"),
        ("cluster_labeler.num_clusters=3", "cluster_labeler.num_clusters must be at least the "
                                           "number of classes (7)"),
        ("cluster_labeler.selection_ratio=0", "cluster_labeler.selection_ratio must be in (0, 1]"),
        ("cluster_labeler.selection_ratio=1.5", "cluster_labeler.selection_ratio must be in"),
        ("swav.epochs=ten", "swav.epochs must be an integer, got 'ten'"),
        ("swav.epochs=2.5", "swav.epochs must be an integer"),
        ("finetune.mixup_alpha=-1", "finetune.mixup_alpha must be >= 0"),
        ("backbone.name=vgg", "backbone.name must be one of ['resnet18', 'small_cnn']"),
        ("runtime.accelerator=tpu", "runtime.accelerator must be one of"),
        ("swav.queue_length=10", "swav.queue_length must be 0 or a multiple of swav.batch_size"),
        ("target.path=''", "target.path is required"),
        ("swav=3", "swav must be a mapping"),
        ("swav.epochs.x=3", "swav.epochs is not a section"),
        ("novalue", "must look like key.sub=value"),
    ],
)
def test_bad_values_name_the_key(tiny_yaml: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(tiny_yaml, [override])
    assert message in str(err.value)
    assert str(tiny_yaml) in str(err.value) or "override" in str(err.value)


def test_required_sections(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path)
    del experiment["target"]
    with pytest.raises(ConfigError, match="target is required"):
        experiment_from_dict(experiment)
    experiment = tiny_experiment(tmp_path)
    experiment["source"].pop("data")
    with pytest.raises(ConfigError, match="source.checkpoint or source.data"):
        experiment_from_dict(experiment)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(broken)
    listing = write_experiment(tmp_path / "list.yaml", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_experiment(listing)
