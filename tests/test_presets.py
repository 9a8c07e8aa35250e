from pathlib import Path

import pytest

from clup.config import SFDA_METHODS, experiment_from_dict
from clup.errors import ConfigError
from clup.plan import describe_plan
from clup.preset_table import PRESETS, TABLE
from clup.presets import auto_preset, require_resolved, resolve_sfda, settings_of
from tests.conftest import tiny_experiment as _tiny


def tiny_experiment(root: Path, **sections: object) -> dict:
    """The tiny experiment with SHOT's source shape, which SHOT, NRC and AaD need."""
    experiment = _tiny(root, **sections)
    experiment["source"]["head"] = "shot"
    return experiment


@pytest.mark.parametrize(("images", "preset"), [
    (84, "office31"), (2_999, "office31"), (3_000, "office-home"), (19_999, "office-home"),
    (20_000, "visda"), (55_388, "visda"),
])
def test_auto_picks_the_preset_by_the_target_train_size(images: int, preset: str) -> None:
    assert auto_preset(images) == preset


def test_auto_resolves_by_size_and_names_the_preset_it_chose(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path, method="nrc"))
    assert config.sfda.preset == "auto" and config.sfda.lr is None
    resolve_sfda(config, 4_000)
    assert config.sfda.preset == "office-home"
    assert (config.sfda.lr, config.sfda.weight_decay, config.sfda.lr_decay) == (1e-3, 5e-4, False)
    assert (config.sfda.k, config.sfda.kk, config.sfda.k_late, config.sfda.kk_late) == (3, 2, 5, 4)
    assert config.sfda.epochs == 40


def test_values_the_experiment_sets_win_over_the_preset(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(
        tmp_path, method="aad", sfda={"preset": "visda", "lr": 0.05, "k": 7, "alpha_decay": 0}))
    resolve_sfda(config, 100)
    sfda = config.sfda
    assert (sfda.preset, sfda.lr, sfda.k, sfda.alpha_decay) == ("visda", 0.05, 7, 0)
    assert (sfda.epochs, sfda.weight_decay, sfda.alpha0) == (15, 1e-3, 1.0)  # from visda


def test_shot_digits_is_the_official_digit_script(tmp_path: Path) -> None:
    """tim-learn/SHOT digit/uda_digit.py: the backbone at the full rate, 30 epochs, no target
    augmentation; digit.sh passes cls_par 0.1."""
    config = experiment_from_dict(tiny_experiment(tmp_path, method="shot",
                                                  sfda={"preset": "digits"}))
    resolve_sfda(config, 1_437)
    sfda = config.sfda
    assert (sfda.backbone_lr_scale, sfda.epochs, sfda.augment, sfda.beta) == (1.0, 30, False, 0.1)


@pytest.mark.parametrize("method", SFDA_METHODS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_sets_everything_its_method_reads(tmp_path: Path, method: str,
                                                       preset: str) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path, method=method,
                                                  sfda={"preset": preset}))
    with pytest.raises(ConfigError, match="unset: resolve the preset"):
        require_resolved(config.sfda, method)
    resolve_sfda(config, 100)
    require_resolved(config.sfda, method)
    assert set(TABLE[method][preset]) == set(settings_of(method))
    config.sfda.validate("sfda")


def test_the_schema_takes_the_preset_names_from_the_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sfda.preset must be one of \['auto', 'digits', "
                                          r"'office31', 'office-home', 'visda'\], got 'x'"):
        experiment_from_dict(tiny_experiment(tmp_path, sfda={"preset": "x"}))


def test_methods_that_do_not_adapt_leave_sfda_alone(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    resolve_sfda(config, 100)
    assert config.sfda.preset == "auto" and config.sfda.lr is None


def test_the_dry_run_names_the_preset_and_its_values(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path, method="shot"))
    plan = describe_plan(config, gpus=[], cpu_threads=2)
    assert "shot settings  preset office31: " in plan
    assert "backbone_lr_scale 0.1" in plan and "lr 0.01" in plan
