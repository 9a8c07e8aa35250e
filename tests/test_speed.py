"""Speed settings (channels-last, compile, loader options) and the throughput benchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from benchmarks import throughput
from clup import speed
from clup.config import (
    BackboneConfig,
    RuntimeConfig,
    SwAVConfig,
    experiment_from_dict,
)
from clup.data.datamodule import DomainDataModule, loader_options
from clup.data.datasets import prepare_dataset
from clup.errors import ConfigError
from clup.io import read_json
from clup.models.backbones import build_backbone
from clup.models.checkpoint import load_backbone, save_backbone
from clup.pipeline import run_stage
from clup.speed import SpeedSettings, compile_backbones, compile_unavailable
from clup.stages.common import make_trainer
from clup.stages.swav_pretrainer import SwAVPretrainer
from tests.conftest import tiny_experiment

TINY = BackboneConfig(name="small_cnn", width=4)
CPU_TRAINER = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))


def swav_module() -> SwAVPretrainer:
    return SwAVPretrainer(build_backbone(TINY), SwAVConfig(n_prototypes=10, projection_dim=8,
                                                           projection_hidden_dim=16))


def is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_converts_the_model_and_every_image_of_a_nested_batch() -> None:
    module = swav_module()
    SpeedSettings(RuntimeConfig(channels_last=True)).setup(CPU_TRAINER, module, "fit")
    convolutions = [p for p in module.parameters() if p.ndim == 4]
    assert convolutions and all(is_channels_last(p) for p in convolutions)

    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    batch = (views, torch.tensor([1, 2]), torch.arange(2))
    datamodule = DomainDataModule(None, [], None, runtime=RuntimeConfig(channels_last=True))
    converted, labels, index = datamodule.on_after_batch_transfer(batch, 0)
    assert isinstance(converted, list) and all(is_channels_last(v) for v in converted)
    assert torch.equal(converted[0], views[0]) and torch.equal(labels, batch[1])
    unchanged = DomainDataModule(None, [], None).on_after_batch_transfer(batch, 0)
    assert unchanged is batch


def test_compile_keeps_state_dict_keys_and_checkpoints_loadable(tmp_path: Path) -> None:
    reason = compile_unavailable(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    module = swav_module()
    keys = list(module.state_dict())
    SpeedSettings(RuntimeConfig(compile=True)).setup(CPU_TRAINER, module, "fit")
    compiled = module.backbone._compiled_call_impl
    assert compiled is not None
    assert list(module.state_dict()) == keys
    compile_backbones(module, torch.device("cpu"))  # a second fit or test: left as it is
    assert module.backbone._compiled_call_impl is compiled
    save_backbone(tmp_path / "backbone.ckpt", module.backbone, TINY)
    load_backbone(tmp_path / "backbone.ckpt", TINY)
    # Not run: the first compiled forward takes about 25 s on 2 CPU cores.


def test_compile_is_skipped_with_a_warning_where_it_cannot_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "compile_unavailable", lambda device: "no compiler here")
    module = swav_module()
    with pytest.warns(UserWarning, match="runtime.compile is true but skipped: no compiler"):
        assert not compile_backbones(module, torch.device("cpu"))
    assert module.backbone._compiled_call_impl is None


def test_stage_trainers_apply_the_speed_settings(tmp_path: Path) -> None:
    config = experiment_from_dict(tiny_experiment(tmp_path))
    trainer = make_trainer(config, tmp_path / "stage", "stage")
    assert any(isinstance(callback, SpeedSettings) for callback in trainer.callbacks)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):
    config = experiment_from_dict(tiny_experiment(tmp_path_factory.mktemp("speed")))
    prepare_dataset(config.target, "target", progress=False)
    return config


def test_loader_options_reach_the_dataloader(target) -> None:
    def loader(runtime: RuntimeConfig) -> torch.utils.data.DataLoader:
        module = DomainDataModule(target.target, target.classes, target.preprocessing,
                                  batch_size=8, runtime=runtime)
        module.setup()
        return module.train_dataloader()

    with_workers = loader(RuntimeConfig(num_workers=2, pin_memory=True, prefetch_factor=3,
                                        persistent_workers=False))
    assert (with_workers.num_workers, with_workers.pin_memory) == (2, True)
    assert (with_workers.prefetch_factor, with_workers.persistent_workers) == (3, False)
    in_process = loader(RuntimeConfig(num_workers=0, accelerator="cpu"))
    assert (in_process.num_workers, in_process.pin_memory) == (0, False)
    assert in_process.prefetch_factor is None and not in_process.persistent_workers
    assert set(loader_options(RuntimeConfig(num_workers=0))) == {"num_workers", "pin_memory"}
    auto = loader_options(RuntimeConfig(num_workers=4))
    assert auto["persistent_workers"] and auto["prefetch_factor"] == 4
    assert auto["pin_memory"] == torch.cuda.is_available()


@pytest.mark.parametrize(("runtime", "message"), [
    ({"prefetch_factor": 0}, "runtime.prefetch_factor must be positive"),
    ({"pin_memory": "yes"}, "runtime.pin_memory must be true or false"),
    ({"channels_last": 1}, "runtime.channels_last must be true or false"),
    ({"compile": "max-autotune"}, "runtime.compile must be true or false"),
])
def test_runtime_speed_settings_are_validated(tmp_path: Path, runtime: dict,
                                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict(tiny_experiment(tmp_path, runtime=runtime))


def test_runtime_speed_settings_are_read(tmp_path: Path) -> None:
    runtime = {"channels_last": True, "compile": True, "pin_memory": None,
               "persistent_workers": False, "prefetch_factor": 2}
    config = experiment_from_dict(tiny_experiment(tmp_path, runtime=runtime))
    assert config.runtime == RuntimeConfig(**runtime)


def test_every_stage_trains_a_step_in_bf16_channels_last_on_the_cpu(tmp_path: Path) -> None:
    """bf16 autocast on the CPU (Lightning's `bf16-mixed`), inputs in channels-last."""
    runtime = {"num_workers": 0, "accelerator": "cpu", "precision": "bf16-mixed",
               "channels_last": True}
    runs = {"clup": ("source", "stage1", "stage2", "stage3"), "shot": ("adapt",),
            "tent": ("adapt",)}
    for method, stages in runs.items():
        raw = tiny_experiment(tmp_path, name=method, method=method, runtime=runtime,
                              sfda={"epochs": 1, "batch_size": 16})
        raw["source"].update(head="shot", run_name="source")
        raw["swav"]["epochs"] = 1
        config = experiment_from_dict(raw)
        for stage in stages:
            run_stage(config, config.run_dir, stage)
    assert math.isfinite(read_json(tmp_path / "runs" / "clup" / "stage2" / "metrics.json")
                         ["final_loss"])
    for method in ("clup", "shot", "tent"):
        metrics = "stage3" if method == "clup" else "adapt"
        assert 0 <= read_json(tmp_path / "runs" / method / metrics / "metrics.json")[
            "accuracy"] <= 1


def test_throughput_benchmark_reports_every_stage(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    threads = torch.get_num_threads()
    try:
        throughput.main(["--backbone", "small_cnn", "--image-size", "16", "--batch-size", "4",
                         "--steps", "2", "--warmup", "1", "--workers", "0,1", "--device", "cpu",
                         "--prepared-size", "24", "--channels-last", "--threads", "1",
                         "--json", str(tmp_path / "throughput.json")])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "throughput.json").read_text())
    stages = {"source", "stage1", "stage2", "stage3"}
    assert report["machine"]["cpu"] and report["machine"]["torch"] == torch.__version__
    assert set(report["loader"]["per_image_ms"]) == stages
    for costs in report["loader"]["per_image_ms"].values():
        assert costs["decode_ms"] > 0 and costs["total_ms"] >= costs["decode_ms"]
    assert all(set(rates) == {"0", "1"} and min(rates.values()) > 0
               for rates in report["loader"]["images_per_s"].values())
    measured = {(row["stage"], row["setting"]) for row in report["model"]}
    assert measured == {(s, k) for s in stages for k in ("32-true", "32-true+cl")}
    assert all(row["images_per_s"] > 0 for row in report["model"])
    assert {row["stage"] for row in report["bound_by"]} == stages
    printed = capsys.readouterr().out
    assert "Loader, images/s" in printed and "SwAVPretrainer step" in printed


def _swav_loader(target, multicrop: str, **runtime) -> tuple[DomainDataModule, Any]:
    swav = SwAVConfig(n_global_crops=2, n_local_crops=2, local_crop_size=8,
                      multicrop=multicrop)
    module = DomainDataModule(target.target, target.classes, target.preprocessing,
                              batch_size=8, runtime=RuntimeConfig(num_workers=0, **runtime),
                              train_views="multicrop", swav=swav)
    module.setup()
    return module, next(iter(module.train_dataloader()))


class _Training:
    training = True
    world_size = 1


def test_batched_multicrop_cuts_the_same_views_on_the_device_as_per_image(target) -> None:
    per_image = _swav_loader(target, "per_image")[1][0]
    module, (images, labels, indices) = _swav_loader(target, "batched", channels_last=True)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (8, 3, 16, 16)
    module.trainer = _Training()
    views, same_labels, _ = module.on_after_batch_transfer((images, labels, indices), 0)
    assert [tuple(v.shape) for v in views] == [tuple(v.shape) for v in per_image]
    assert all(is_channels_last(v) for v in views) and torch.equal(same_labels, labels)
    # Outside training (prediction, test) nothing is cut.
    module.trainer.training = False
    untouched = module.on_after_batch_transfer((images, labels, indices), 0)[0]
    assert untouched.dtype == torch.uint8


def test_decoded_images_are_kept_so_later_epochs_decode_nothing(
        target, monkeypatch: pytest.MonkeyPatch) -> None:
    from clup.data import datamodule as dm

    calls: list[Path] = []
    real = dm.load_image
    monkeypatch.setattr(dm, "load_image", lambda path: (calls.append(path), real(path))[1])

    def epochs(cache_mb: int) -> list[Path]:
        calls.clear()
        module = DomainDataModule(target.target, target.classes, target.preprocessing,
                                  batch_size=8, runtime=RuntimeConfig(num_workers=0,
                                                                      image_cache_mb=cache_mb))
        module.setup()
        loader = module.train_dataloader()
        for _ in range(2):
            for _ in loader:
                pass
        return list(calls)

    # 84 images, batches of 8, the last partial one dropped: 80 a shuffled epoch.
    cached = epochs(cache_mb=512)
    assert len(cached) == len(set(cached)) > 80  # each image decoded once, at first sight
    assert len(epochs(cache_mb=0)) == 160
