"""Every config in every group composes, and instantiates into the object it describes."""

from __future__ import annotations

import functools
import re

import lightning as L
import pytest
import torch
from conftest import CONFIG_DIR, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timm.scheduler import CosineLRScheduler

from dsnet.config import ddp_start_method
from dsnet.models import small_input
from dsnet.module import ClassifierModule
from dsnet.task import instantiate_group


def configs_of(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_has_its_configs():
    assert configs_of("model") == ["conv", "convert", "dsconv", "group", "mobilenet_v2", "resnet18", "resnet34", "resnet50"]
    assert configs_of("optim") == ["adamw", "rmsprop", "sgd"]
    assert {"default", "cpu", "gpu", "ddp"} <= set(configs_of("trainer"))
    assert configs_of("logger") == ["csv", "tensorboard", "wandb"]
    assert configs_of("callbacks") == ["default", "ema", "none"]
    assert {"fast_dev_run", "overfit"} <= set(configs_of("debug"))
    assert configs_of("hydra/launcher") == ["slurm"]  # submitit_local is the plugin's own


def test_default_train_config(tmp_path):
    cfg = compose_train(run_dir=tmp_path, tiny=False)
    assert cfg.data._target_ == "dsnet.data.FashionMNISTDataModule"
    assert (cfg.model.arch, cfg.model.conv) == ("mobilenet_v1", "dsconv")
    assert cfg.optim.optimizer._target_ == "torch.optim.SGD" and cfg.optim.optimizer.nesterov
    assert cfg.module.num_classes == cfg.model.num_classes == cfg.data.num_classes == 10
    assert cfg.model.in_chans == 1 and cfg.model.small_input is True  # 28 px
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert list(cfg.logger) == ["csv"]
    assert cfg.seed == 42 and cfg.ckpt_path is None


@pytest.mark.parametrize("name", configs_of("model"))
def test_model_configs_build_their_network(name, tmp_path):
    keep_width = ("model.width=1.0",) if name == "convert" else ()  # a conversion keeps its source's channels
    cfg = compose_train(f"model={name}", *keep_width, run_dir=tmp_path)
    net = instantiate(cfg.model)
    assert net.num_classes == 10
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    grouped = {c.groups for c in convs if c.kernel_size == (3, 3)} - {1}
    if cfg.model.conv == "standard":
        assert grouped == set()
    elif cfg.model.conv == "group":
        assert grouped == {2}
    else:  # depthwise: as many groups as channels
        assert all(c.groups in (1, c.in_channels) for c in convs) and grouped


def test_conv_and_dsconv_differ_only_in_the_convolution(tmp_path):
    conv, dsconv = (OmegaConf.to_container(compose_train(f"model={m}", run_dir=tmp_path).model, resolve=True)
                    for m in ("conv", "dsconv"))
    assert (conv.pop("conv"), dsconv.pop("conv")) == ("standard", "dsconv")
    assert conv == dsconv


def test_small_input_follows_image_size(tmp_path):
    assert compose_train("data.image_size=64", run_dir=tmp_path).model.small_input is True
    assert compose_train("data.image_size=96", run_dir=tmp_path).model.small_input is False
    with pytest.raises(ValueError, match="image_size=0"):
        small_input(0)


@pytest.mark.parametrize("name", configs_of("optim"))
def test_optim_configs_warm_up_then_decay(name, tmp_path):
    cfg = compose_train(f"optim={name}", run_dir=tmp_path).optim
    optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(2))])
    base_lr = cfg.optimizer.lr
    scheduler = instantiate(cfg.scheduler)(optimizer, t_initial=100, warmup_t=10)
    assert isinstance(scheduler, CosineLRScheduler)

    def lr_at(step: int) -> float:
        scheduler.step_update(num_updates=step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(cfg.scheduler.warmup_lr_init)
    assert lr_at(5) == pytest.approx((cfg.scheduler.warmup_lr_init + base_lr) / 2)  # linear
    assert lr_at(10) == pytest.approx(base_lr)
    assert lr_at(60) == pytest.approx(cfg.scheduler.lr_min + (base_lr - cfg.scheduler.lr_min) / 2)  # cosine midpoint
    assert lr_at(110) == pytest.approx(cfg.scheduler.lr_min)


def test_optimizers_are_the_documented_ones(tmp_path):
    rms = compose_train("optim=rmsprop", run_dir=tmp_path).optim.optimizer
    assert (rms._target_, rms.alpha, rms.momentum, rms.eps) == ("timm.optim.RMSpropTF", 0.9, 0.9, 1.0)
    adamw = compose_train("optim=adamw", run_dir=tmp_path).optim.optimizer
    assert adamw._target_ == "torch.optim.AdamW"


def test_module_config_instantiates_around_a_network(tmp_path):
    cfg = compose_train(run_dir=tmp_path)
    module = instantiate(cfg.module, net=instantiate(cfg.model))
    assert isinstance(module, ClassifierModule)
    assert isinstance(module.optimizer_factory, functools.partial)
    assert module.hparams.label_smoothing == cfg.module.label_smoothing


@pytest.mark.parametrize("name", ["default", "cpu", "ddp"])
def test_trainer_configs_instantiate_on_cpu(name, tmp_path):
    devices = 2 if name == "ddp" else 1
    cfg = compose_train(f"trainer={name}", "trainer.accelerator=cpu", f"trainer.devices={devices}", run_dir=tmp_path)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, L.Trainer)
    assert trainer.num_devices == devices
    if name == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"
        assert trainer.strategy._start_method == "spawn"  # no Hydra run: never re-run pytest's argv


def test_gpu_trainer_config(tmp_path):
    cfg = compose_train("trainer=gpu", run_dir=tmp_path, tiny=False).trainer
    assert (cfg.accelerator, cfg.devices, cfg.precision, cfg.benchmark) == ("gpu", 1, "bf16-mixed", True)


def test_ddp_start_method_is_spawn_outside_a_single_hydra_run():
    assert not HydraConfig.initialized()
    assert ddp_start_method() == "spawn"


@pytest.mark.parametrize("name", configs_of("logger"))
def test_logger_configs_instantiate(name, tmp_path):
    cfg = compose_train(f"logger={name}", *(["logger.wandb.offline=true"] if name == "wandb" else []), run_dir=tmp_path)
    (logger,) = instantiate_group(cfg, "logger")
    assert isinstance(logger, L.pytorch.loggers.Logger)
    assert str(tmp_path) in str(logger.save_dir)


@pytest.mark.parametrize("name", configs_of("callbacks"))
def test_callback_configs_instantiate(name, tmp_path):
    callbacks = instantiate_group(compose_train(f"callbacks={name}", run_dir=tmp_path), "callbacks")
    assert all(isinstance(c, L.Callback) for c in callbacks)
    names = {type(c).__name__ for c in callbacks}
    if name in ("default", "ema"):
        # pytest's stdout is no terminal: the progress callback is the plain log
        assert {"ModelCheckpoint", "LearningRateMonitor", "ProgressLog", "EpochTimer"} <= names
    assert ("WarmupEMA" in names) == (name == "ema")


@pytest.mark.parametrize("mode,expected", [("rich", "ThrottledRichProgressBar"), ("log", "ProgressLog")])
def test_progress_bar_mode_picks_the_callback(mode, expected, tmp_path):
    cfg = compose_train(f"callbacks.progress_bar.mode={mode}", run_dir=tmp_path)
    names = {type(c).__name__ for c in instantiate_group(cfg, "callbacks")}
    assert expected in names and not {"ThrottledRichProgressBar", "ProgressLog"} - {expected} & names


def test_a_callback_is_switched_off_with_null_and_a_bad_entry_is_named(tmp_path):
    names = {type(c).__name__ for c in instantiate_group(compose_train("callbacks.lr_monitor=null", run_dir=tmp_path),
                                                          "callbacks")}
    assert "LearningRateMonitor" not in names and "ModelCheckpoint" in names
    with pytest.raises(ValueError, match="callbacks.oops must be a config with a _target_"):
        instantiate_group(compose_train("+callbacks.oops.monitor=val/acc", run_dir=tmp_path), "callbacks")


@pytest.mark.parametrize("name", configs_of("debug"))
def test_debug_configs_compose(name, tmp_path):
    cfg = compose_train(f"debug={name}", run_dir=tmp_path)
    assert cfg.trainer.get("fast_dev_run") or cfg.trainer.get("overfit_batches")


@pytest.mark.parametrize("name", configs_of("data"))
def test_data_configs_instantiate(name, tmp_path):
    # The ImageNet subset counts its classes from the folder tree at compose time.
    for cls in ("n01440764", "n01443537", "n01484850"):
        (tmp_path / "data" / "imagenet" / "train" / cls).mkdir(parents=True)
    cfg = compose_train(f"data={name}", run_dir=tmp_path, tiny=False)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, L.LightningDataModule)
    assert cfg.model.num_classes == (3 if name == "imagenet_subset" else cfg.data.num_classes)
    assert cfg.model.small_input == (cfg.data.image_size <= 64)


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_hydra_run_and_sweep_dirs():
    hydra = compose_with_hydra("task_name=probe", "paths.log_dir=logs").hydra
    assert re.fullmatch(r"logs/probe/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", hydra.run.dir)
    assert re.fullmatch(r"logs/probe/multiruns/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", hydra.sweep.dir)
    assert OmegaConf.to_container(hydra.sweep, resolve=False)["subdir"] == "${hydra.job.num}"
    assert hydra.job.chdir is False


def test_data_dir_default_and_env_override(monkeypatch):
    monkeypatch.delenv("DSNET_DATA_DIR", raising=False)
    assert compose_with_hydra().paths.data_dir == "data"
    monkeypatch.setenv("DSNET_DATA_DIR", "/datasets")
    assert compose_with_hydra().paths.data_dir == "/datasets"


def test_submitit_launcher_configs():
    local = compose_with_hydra("hydra/launcher=submitit_local").hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")
    slurm = compose_with_hydra("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4").hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (slurm.nodes, slurm.tasks_per_node, slurm.gpus_per_node) == (1, 4, 4)  # one task per GPU
    assert slurm.max_num_timeout == 0


@pytest.mark.parametrize("name", configs_of("experiment"))
def test_experiment_configs_compose(name):
    cfg = compose_with_hydra(f"experiment={name}")
    assert cfg.model._target_ == "dsnet.models.create_model"
    assert cfg.module.num_classes == cfg.data.num_classes
