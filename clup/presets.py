"""An experiment's `sfda` settings, filled from its method's preset (clup/preset_table.py).

An experiment picks a preset with `sfda.preset` (`auto`: by the number of target train
images, `auto_preset`); every `sfda` value the experiment sets itself wins over the
preset's. The driver resolves the preset before it writes the run's `config.yaml`, so the
run folder, its fingerprints and W&B hold the values that trained.
"""

from __future__ import annotations

from clup.config import SFDA_METHODS, ExperimentConfig, SFDAConfig
from clup.errors import ConfigError
from clup.preset_table import AUTO_SIZES, TABLE


def auto_preset(target_train_images: int) -> str:
    for below, preset in AUTO_SIZES:
        if target_train_images < below:
            return preset
    return "visda"


def resolve_sfda(config: ExperimentConfig, target_train_images: int) -> None:
    """Fill the `sfda` values the experiment left unset from its method's preset, in place,
    and name the preset `auto` chose. Methods that do not adapt keep `sfda` as it is."""
    sfda = config.sfda
    if config.method not in SFDA_METHODS:
        return
    preset = auto_preset(target_train_images) if sfda.preset == "auto" else sfda.preset
    for name, value in TABLE[config.method][preset].items():
        if getattr(sfda, name) is None:
            setattr(sfda, name, value)
    sfda.preset = preset


def settings_of(method: str) -> list[str]:
    """The `sfda` settings `method` reads, as its presets name them."""
    return sorted(set().union(*TABLE[method].values())) if method in TABLE else []


def unresolved(sfda: SFDAConfig, method: str) -> list[str]:
    """The settings `method` reads that are still unset (the preset not resolved yet)."""
    return [n for n in settings_of(method) if getattr(sfda, n) is None]


def require_resolved(sfda: SFDAConfig, method: str) -> None:
    missing = unresolved(sfda, method)
    if missing:
        raise ConfigError(f"sfda.{', sfda.'.join(missing)} unset: resolve the preset "
                          f"{sfda.preset!r} first (clup.presets.resolve_sfda)")
