from pathlib import Path

import pytest

from clup.config import config_to_dict, dump_yaml, experiment_from_dict, load_experiment
from clup.errors import ConfigError
from tests.conftest import tiny_experiment, write_experiment

SHIPPED = sorted(Path(__file__).parents[1].joinpath("experiments").glob("*.yaml"))
GRIDS = [p for p in SHIPPED if p.stem.startswith(("benchmark", "ablation"))]
EXPERIMENTS = [p for p in SHIPPED if p not in GRIDS]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiments_load(path: Path) -> None:
    config = load_experiment(path)
    assert config.name


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_shipped_benchmark_grids_configure_every_run(path: Path) -> None:
    from clup.benchmark import load_grid, plan_runs

    grid = load_grid(path)
    runs = plan_runs(grid)  # loads and validates each run's experiment
    assert len(runs) == len(grid.seeds) * len(grid.setups) * len(grid.methods)


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
        ("cluster_labeler.kmeans_init=kmeans", "cluster_labeler.kmeans_init must be one of "
                                               "['k-means++', 'random'], got 'kmeans'"),
        ("cluster_labeler.kmeans_n_init=0", "cluster_labeler.kmeans_n_init must be positive"),
        ("swav.epochs=ten", "swav.epochs must be an integer, got 'ten'"),
        ("runtime.precision=bf16-mix", "runtime.precision must be one of ['auto', '32-true'"),
        ("swav.run_name=a/b", "swav.run_name must be a non-empty folder name"),
        ("method=nrc", "method nrc adapts SHOT's network shape: set source.head: shot"),
        ("source.run_name=.hidden", "source.run_name must be a non-empty folder name"),
        ("source.optimizer.decay=1.5", "source.optimizer.decay (per-epoch factor) must be in"),
        ("swav.epochs=2.5", "swav.epochs must be an integer"),
        ("finetune.mixup_alpha=-1", "finetune.mixup_alpha must be >= 0"),
        ("backbone.name=vgg", "backbone.name must be one of ['resnet18', 'small_cnn']"),
        ("runtime.accelerator=tpu", "runtime.accelerator must be one of"),
        ("swav.queue_length=10", "swav.queue_length must be 0 or a multiple of swav.batch_size"),
        ("target.path=''", "target.path is required"),
        ("target.kind=bogus", ": target.kind must be one of ['manifest'"),
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
    source_only = experiment_from_dict(experiment)  # a source-training experiment needs none
    with pytest.raises(ConfigError, match="names no target dataset"):
        source_only.require_target()
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


def test_extends_merges_base_files_in_order(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write_experiment(shared / "base.yaml", {"seed": 3, "swav": {"epochs": 7, "batch_size": 16}})
    source = tiny_experiment(tmp_path)
    del source["seed"]
    source["extends"] = "shared/base.yaml"
    source["swav"] = {"epochs": 9}
    write_experiment(tmp_path / "source.yaml", source)
    setup = write_experiment(tmp_path / "setup.yaml", {
        "extends": ["source.yaml"], "name": "setup", "cluster_labeler": {"num_clusters": 12}})
    config = load_experiment(setup, ["swav.epochs=11"])
    assert config.name == "setup" and config.seed == 3
    assert (config.swav.epochs, config.swav.batch_size) == (11, 16)
    assert config.cluster_labeler.num_clusters == 12
    assert config.cluster_labeler.selection_ratio == 0.5  # from source.yaml


def test_extends_reports_missing_files_and_cycles(tmp_path: Path) -> None:
    write_experiment(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_experiment(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="extends itself"):
        load_experiment(tmp_path / "a.yaml")
    write_experiment(tmp_path / "c.yaml", {"extends": "gone.yaml"})
    with pytest.raises(ConfigError, match=r"gone.yaml does not exist \(extended by .*c.yaml\)"):
        load_experiment(tmp_path / "c.yaml")
    write_experiment(tmp_path / "d.yaml", {"extends": {"x": 1}})
    with pytest.raises(ConfigError, match="extends must be a file name or a list"):
        load_experiment(tmp_path / "d.yaml")


@pytest.mark.parametrize("name", ["afe-expw", "afe-fer2013", "rafdb-expw", "rafdb-fer2013"])
def test_paper_setups_carry_the_reference_settings(name: str) -> None:
    reference = {"afe-expw": (1000, 0.1), "afe-fer2013": (250, 0.1),
                 "rafdb-expw": (250, 0.3), "rafdb-fer2013": (1000, 0.2)}
    config = load_experiment(Path(__file__).parent.parent / "experiments" / f"{name}.yaml")
    labeler = config.cluster_labeler
    assert (labeler.num_clusters, labeler.selection_ratio) == reference[name]
    assert config.backbone.name == config.source.backbone.name == "resnet18"
    assert config.backbone.small_images and not config.source.backbone.small_images
    finetune = config.finetune
    assert (finetune.epochs, finetune.batch_size, finetune.mixup_alpha) == (50, 32, 0.2)
    assert (finetune.optimizer.name, finetune.optimizer.lr, finetune.optimizer.momentum,
            finetune.optimizer.nesterov, finetune.optimizer.weight_decay) == \
        ("sgd", 0.1, 0.9, True, 5e-4)
    assert (config.swav.n_prototypes, config.swav.projection_hidden_dim,
            config.swav.projection_dim, config.swav.epochs) == (5000, 2048, 128, 1000)
    source = config.source
    assert (source.label_smoothing, source.optimizer.lr, source.optimizer.schedule,
            source.optimizer.decay, source.preprocessing.image_size) == \
        (0.1, 0.01, "exponential", 0.99, 160)
    assert source.run_name == f"source-{name.split('-')[0]}"


def test_the_source_models_share_everything_but_their_dataset() -> None:
    """experiments/shared/source.yaml holds the recipe; each source file names its data."""
    recipes = []
    for dataset in ("afe", "rafdb"):
        path = Path(__file__).parents[1] / "experiments" / f"source-{dataset}.yaml"
        config = config_to_dict(load_experiment(path))
        assert config.pop("name") == config["source"].pop("run_name") == f"source-{dataset}"
        assert config["source"].pop("data")["kind"] == dataset
        recipes.append(config)
    assert recipes[0] == recipes[1]


def test_an_error_in_a_base_file_names_the_files_merged(tmp_path: Path) -> None:
    write_experiment(tmp_path / "base.yaml", {"swav": {"epochz": 3}})
    experiment = tiny_experiment(tmp_path)
    experiment["extends"] = "base.yaml"
    path = write_experiment(tmp_path / "top.yaml", experiment)
    with pytest.raises(ConfigError, match=r"top.yaml \(merged with .*base.yaml\): unknown key"):
        load_experiment(path)
