"""The LightningModule: loss, metrics and optimizer wiring around an injected network.

The network comes in built (``dsnet.models.create_model``); the data comes from the datamodule. This
module owns what happens per step: cross-entropy with label smoothing (hard labels, or soft labels
of shape (N, num_classes) from MixUp/CutMix), top-1/top-5 accuracy, and the optimizer and its
per-step schedule, both given as Hydra partials.

Per-step overhead is kept off the host: metrics live on the device and are read once per epoch
(``train/loss_epoch``, ``train/acc``), the step loss is logged only on the steps the logger writes
(``train/loss_step``, every ``log_every_n_steps``), nothing calls ``.item()``, and the metrics skip
their input checks (each is a host-device sync per step on a GPU). Epoch metrics are torchmetrics
objects, so under DDP they are reduced over all ranks, not rank 0's share alone. Weight EMA is
Lightning's ``EMAWeightAveraging`` callback (``callbacks=ema``), which validates, checkpoints and so
tests with the averaged weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from timm.scheduler.scheduler import Scheduler as TimmScheduler
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dsnet.models import layer_type

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # partial: (params) -> optimizer
SchedulerFactory = Callable[..., TimmScheduler]  # partial: (optimizer, t_initial=, warmup_t=) -> scheduler


class ClassifierModule(L.LightningModule):
    """Image classification with an injected network.

    Args:
        net: the network; maps (N, C, H, W) images to (N, num_classes) logits.
        num_classes: number of classes (top-5 accuracy becomes top-``num_classes`` below 5 classes).
        optimizer: partial taking the parameter groups, e.g. ``partial(torch.optim.SGD, lr=0.1)``.
        scheduler: partial of a timm scheduler taking ``(optimizer, t_initial=, warmup_t=)`` in steps:
            this module fills in the step counts from the trainer and steps it after every optimizer
            step. None keeps the learning rate constant.
        warmup_epochs: length of the linear warm-up, in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        no_weight_decay_norm_bias: exempt normalisation parameters and biases from weight decay,
            as the MobileNet recipes do (decay on them regularises nothing, it only rescales).
        depthwise_weight_decay: weight decay of the depthwise filters (the convolutions with groups ==
            in_channels, found by ``dsnet.models.layer_type``), in a parameter group of their own;
            Howard et al. put "very little or no" decay on them, as they have so few parameters.
            None: the optimizer's weight decay, like every other weight.
        compile: ``torch.compile`` the network in place (state-dict keys stay unchanged).
        channels_last: keep weights and inputs in channels-last memory format.
        freeze_norm_stats: batch norm normalises with its running statistics and never updates
            them, in training too (as when fine-tuning with small per-device batches): an image's
            output then does not depend on the other images of its batch, so DDP's split of a
            batch over processes changes nothing (tests/test_ddp.py).
        input_size: ``(channels, height, width)`` of one image; given, it becomes
            ``example_input_array``, from which Lightning's model summary counts FLOPs and shapes.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        no_weight_decay_norm_bias: bool = True,
        depthwise_weight_decay: float | None = None,
        compile: bool = False,
        channels_last: bool = False,
        freeze_norm_stats: bool = False,
        input_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs!r} must be >= 0")
        if depthwise_weight_decay is not None and not depthwise_weight_decay >= 0:
            raise ValueError(f"depthwise_weight_decay={depthwise_weight_decay!r} must be >= 0, or None for the optimizer's")
        # Only plain values go into the checkpoint: it must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "input_size"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._compiled = False
        if input_size is not None:
            self.example_input_array = torch.zeros(1, *(int(n) for n in input_size))

        # validate_args=False: the label check is torch.unique per update, and nan_strategy="disable":
        # the NaN check is isnan().any(); each a host-device sync per step on a GPU. Labels come from
        # our own data modules, and a NaN loss is NonFiniteLossGuard's to catch.
        def accuracy(top_k: int) -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)

        top5 = min(5, num_classes)
        self.train_acc = accuracy(1)
        self.val_acc, self.val_acc5 = accuracy(1), accuracy(top5)
        self.test_acc, self.test_acc5 = accuracy(1), accuracy(top5)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in the checkpoint: a resumed run remembers its best

    # --- model ----------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Once per process, before the model moves to its device (.to keeps the memory format).
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and not self._compiled:
            self.net.compile()  # in place, unlike torch.compile(net): no "_orig_mod." in the state dict
            self._compiled = True

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        # F.cross_entropy takes class indices (N,) or class probabilities (N, C) alike.
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    # --- steps ----------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        # Soft targets (MixUp/CutMix): accuracy against the dominant class.
        self.train_acc.update(logits, y.argmax(dim=1) if y.ndim == 2 else y)
        self.train_loss.update(loss.detach(), weight=x.shape[0])
        # self.log costs ~1 ms a call (Lightning moves its stored result to the value's device every
        # time; docs/speed.md), so the step loss is logged only on the steps the logger writes.
        # global_step + 1 is the count Lightning's own should-log test uses.
        every = self.trainer.log_every_n_steps
        if self.trainer.fast_dev_run or (every > 0 and (self.global_step + 1) % every == 0):
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        # Lightning puts every layer in training mode before the epoch (and restores these modes
        # after each validation), so batch norm is switched back to eval mode here.
        if self.hparams.freeze_norm_stats:
            for layer in self.net.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute())
        self.train_loss.reset()
        self.train_acc.reset()

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        getattr(self, f"{stage}_loss").update(self._loss(logits, y), weight=x.shape[0])
        for name in ("acc", "acc5"):
            metric = getattr(self, f"{stage}_{name}")
            metric.update(logits, y)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc")
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a couple of batches before training: not a best
            return
        self.val_acc_best.update(self.val_acc.compute())  # compute() is cached: Lightning reuses it
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    # --- optimisation -----------------------------------------------------------------------------

    def _param_groups(self) -> list:
        params = [p for p in self.net.parameters() if p.requires_grad]
        depthwise = []
        if self.hparams.depthwise_weight_decay is not None:
            depthwise = [m.weight for m in self.net.modules() if layer_type(m) == "depthwise" and m.weight.requires_grad]
            in_depthwise = {id(p) for p in depthwise}
            params = [p for p in params if id(p) not in in_depthwise]
        dw_group = [{"params": depthwise, "weight_decay": float(self.hparams.depthwise_weight_decay)}] if depthwise else []
        if not self.hparams.no_weight_decay_norm_bias:
            return [{"params": params}, *dw_group] if dw_group else params
        # Norm scales/shifts and biases are the only 1-d parameters of a conv net.
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}, *dw_group]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self._param_groups())
        if self.scheduler_factory is None:
            return optimizer
        trainer = self.trainer
        total_steps = int(trainer.estimated_stepping_batches)  # also sizes the train loader
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        warmup = min(round(self.hparams.warmup_epochs * steps_per_epoch), total_steps - 1)
        scheduler = self.scheduler_factory(optimizer, t_initial=total_steps - warmup, warmup_t=warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are told the step count instead of counting calls, so a resumed run picks
        # up the schedule exactly where the checkpoint left it.
        if isinstance(scheduler, TimmScheduler):
            scheduler.step_update(num_updates=self.global_step)
        else:
            super().lr_scheduler_step(scheduler, metric)
