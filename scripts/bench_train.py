"""How much does our training loop cost on top of the math? dsnet's train() against a plain loop.

    python scripts/bench_train.py --threads 1                       # CPU, default config, width 0.25
    python scripts/bench_train.py --device cuda trainer=gpu         # GPU, bf16-mixed
    python scripts/bench_train.py --threads 1 callbacks.progress_bar=null   # Hydra overrides go last

Both sides train the same configuration for two epochs of ``--steps`` batches each; only the second
epoch is timed (the first is warm-up: allocator, oneDNN/cuDNN kernels, worker start). Timed: from the
epoch's start (before the loader's iterator is made) to the end of its last optimizer step,
synchronised on GPU at both ends.

- ``dsnet``: ``dsnet.task.train(cfg)``, the function ``train.py`` calls, on the composed
  ``configs/train.yaml`` with the default callbacks and logger; a ``StepTimer`` callback (below)
  reads the clock at ``on_train_epoch_start`` and at every ``on_train_batch_end``. Validation
  (``--val-batches`` batches) and checkpointing run between the epochs, outside the timing; the
  test is skipped. Its stdout (progress bar, model summary) goes to a file, as in a batch job
  (shown with ``--verbose``; printed to stderr if the run fails).
- ``plain``: the loop a person would write with the same pieces: the same data module, loader,
  sampler epochs and ``transform_batch``; the same network (channels-last and compiled as
  configured), loss with label smoothing, optimizer with the same parameter groups, timm scheduler
  updated every step, autocast for ``bf16-mixed``. No metrics, no logging.

Rounds alternate which side goes first. Reported per side: the epoch's wall and CPU seconds (CPU
time of this process, all threads: on a shared machine it moves much less than wall time when
other processes take turns on the cores) and the median step wall time (robust to load spikes).
Then the medians over rounds of the per-round ratio dsnet/plain (target <= 1.05) and of the fixed
overhead per step, (t_dsnet - t_plain) / steps (target <= 1 ms), from each of the three clocks.

The overhead is a few ms at most, so to see it clearly shrink the math, not the loop, e.g.
``data=synthetic data.image_size=16 data.batch_size=32 data.num_train=8192 data.val_size=256``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dsnet import allocator
from dsnet.config import register_resolvers
from dsnet.environment import environment
from dsnet.task import train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16}  # precisions the plain loop reproduces


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: the Trainer's accelerator and the plain loop's device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--steps", type=int, default=50, help="training batches per epoch (limit_train_batches)")
    parser.add_argument("--val-batches", type=int, default=2, help="validation batches between the epochs (untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--verbose", action="store_true", help="show the dsnet run's output instead of logging it")
    parser.add_argument("--allocator", default="keep_freed", choices=["keep_freed", "system"],
                        help="dsnet.allocator for this process, as train.py sets it (both sides share it)")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml (both sides)")
    args = parser.parse_args()
    for name in ("steps", "val_batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads). On a loaded machine the CPU
    time does not count the turns other processes take on the cores; the wall time does."""
    return time.perf_counter(), time.process_time()


def bench_config(args, run_dir: str):
    """``configs/train.yaml`` shrunk to two epochs of ``--steps`` batches, writing into ``run_dir``."""
    accelerator = "cpu" if args.device == "cpu" else "gpu"
    overrides = [
        "model.width=0.25",  # the smallest default width: the shortest step, so overhead shows most
        *args.overrides,
        "trainer.max_epochs=2",
        f"++trainer.limit_train_batches={args.steps}",
        f"++trainer.limit_val_batches={args.val_batches}",
        f"trainer.accelerator={accelerator}",
        "test=false",
        f"paths.output_dir={run_dir}",
        f"paths.log_dir={run_dir}",
        f"+callbacks.step_timer._target_={__name__}.StepTimer",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


# --- dsnet: the real task, timed by a callback ------------------------------------------------------


class StepTimer(L.Callback):
    """Clock reads per training epoch: its start, then the end of every training step."""

    def __init__(self) -> None:
        self.epochs: list[list[tuple[float, float]]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.epochs.append([clock()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == trainer.num_training_batches - 1:  # the epoch's end: wait for the device
            sync(pl_module.device)
        self.epochs[-1].append(clock())


def run_dsnet(args) -> list[tuple[float, float]]:
    """Clock reads of the timed (second) epoch of ``dsnet.task.train``."""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:
        cfg = bench_config(args, run_dir)
        log_path = Path(run_dir) / "stdout.log"
        try:
            with contextlib.ExitStack() as stack:
                if not args.verbose:
                    stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(log_path, "w"))))
                _, objects = train(cfg)
        except Exception:
            if log_path.is_file():  # the run's own output says most about why it failed
                print(log_path.read_text()[-4000:], file=sys.stderr)
            raise
        (timer,) = [c for c in objects["callbacks"] if isinstance(c, StepTimer)]
    return timer.epochs[-1]


# --- plain: the same training in a hand-written loop ---------------------------------------------------


def param_groups(net: torch.nn.Module) -> list[dict]:
    """Weight decay on conv/linear weights only, as ``ClassifierModule(no_weight_decay_norm_bias=True)``."""
    params = [p for p in net.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def run_plain(args) -> list[tuple[float, float]]:
    """Clock reads of the timed (second) epoch of a plain PyTorch loop over the same configuration."""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:
        cfg = bench_config(args, run_dir)
    precision = str(cfg.trainer.precision)
    if precision not in AUTOCAST or cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        raise SystemExit(f"bench_train: the plain loop reproduces precision {sorted(AUTOCAST)} without gradient "
                         f"accumulation; got precision={precision!r}")
    device = torch.device(args.device)
    if cfg.trainer.benchmark is not None:
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    net = instantiate(cfg.model).to(device).train()
    channels_last = bool(cfg.channels_last)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.compile:
        net.compile()
    optimizer = instantiate(cfg.optim.optimizer)(params=param_groups(net))
    steps_per_epoch, epochs = args.steps, int(cfg.trainer.max_epochs)
    total = steps_per_epoch * epochs
    warmup = min(round(cfg.optim.warmup_epochs * steps_per_epoch), total - 1)
    scheduler = instantiate(cfg.optim.scheduler)(optimizer, t_initial=total - warmup, warmup_t=warmup)
    autocast_dtype = AUTOCAST[precision]
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    label_smoothing = float(cfg.module.label_smoothing)
    loader = datamodule.train_dataloader()
    step = 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        sync(device)
        stamps = [clock()]
        for _, batch in zip(range(steps_per_epoch), loader):
            x, y = datamodule.transform_batch(tuple(t.to(device, non_blocking=True) for t in batch), train=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            stamps.append(clock())
        sync(device)
        stamps[-1] = clock()
    return stamps


# --- rounds, summary -----------------------------------------------------------------------------


def epoch_s(stamps: list[tuple[float, float]], which: int = 0) -> float:
    """Length of the timed epoch: wall seconds (``which=0``) or CPU seconds (``which=1``)."""
    return stamps[-1][which] - stamps[0][which]


def median_step_ms(stamps: list[tuple[float, float]]) -> float:
    """Median wall time of the steps after the first (which also makes the loader's iterator)."""
    walls = [wall for wall, _ in stamps]
    steps = [b - a for a, b in zip(walls[1:], walls[2:])] or [walls[-1] - walls[0]]
    return statistics.median(steps) * 1e3


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    register_resolvers()  # the configs composed below use ${dsnet.*}
    allocator.configure(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Lightning 2.6 warns about torch's pytree API on every fit; it says nothing about this benchmark.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if not args.verbose:  # Lightning's info lines (GPU available, model summary) would bury the table
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = bench_config(args, run_dir)
    env = environment(args.device)
    batch_size = int(cfg.data.batch_size)
    print(f"# bench_train  device={args.device} threads={torch.get_num_threads()} steps/epoch={args.steps} "
          f"repeats={args.repeats} data={cfg.data._target_.rsplit('.', 1)[-1]} batch_size={batch_size} "
          f"loader={cfg.data.loader} model={cfg.model.arch}/{cfg.model.conv} width={cfg.model.width} "
          f"precision={cfg.trainer.precision} channels_last={cfg.channels_last} compile={cfg.compile} "
          f"log_every_n_steps={cfg.trainer.log_every_n_steps} overrides={args.overrides}")
    print("# " + "  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"# load average (1/5/15 min) at start: {load_average()}")

    sides = {"plain": run_plain, "dsnet": run_dsnet}
    stamps: dict[str, list[list[float]]] = {name: [] for name in sides}
    for round_idx in range(args.repeats):
        for name in list(sides)[:: 1 if round_idx % 2 == 0 else -1]:  # alternate who goes first
            stamps[name].append(sides[name](args))

    walls = {name: [epoch_s(s) for s in runs] for name, runs in stamps.items()}
    cpus = {name: [epoch_s(s, which=1) for s in runs] for name, runs in stamps.items()}
    step_ms = {name: [median_step_ms(s) for s in runs] for name, runs in stamps.items()}
    steps = len(stamps["plain"][0]) - 1
    if any(len(s) - 1 != steps for runs in stamps.values() for s in runs):
        raise SystemExit("bench_train: the two sides ran different numbers of steps; the comparison would be unfair")
    ratio = {"wall": [d / p for d, p in zip(walls["dsnet"], walls["plain"])],
             "cpu": [d / p for d, p in zip(cpus["dsnet"], cpus["plain"])]}
    overhead_ms = {  # per step, per round
        "wall epoch": [(d - p) / steps * 1e3 for d, p in zip(walls["dsnet"], walls["plain"])],
        "median step": [d - p for d, p in zip(step_ms["dsnet"], step_ms["plain"])],
        "CPU epoch": [(d - p) / steps * 1e3 for d, p in zip(cpus["dsnet"], cpus["plain"])],
    }

    print("| loop | epoch wall s | epoch CPU s | median step ms | images/s (wall) |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("plain", "plain PyTorch loop"), ("dsnet", "dsnet train() (Lightning)")):
        images_s = steps * batch_size / statistics.median(walls[name])
        print(f"| {label} | {spread(walls[name], '.3f')} | {spread(cpus[name], '.3f')} "
              f"| {spread(step_ms[name], '.2f')} | {images_s:,.0f} |")
    print("(median over rounds, min to max in brackets)")
    print(f"# load average (1/5/15 min) at end: {load_average()}")
    print(f"ratio dsnet/plain: {spread(ratio['wall'], '.3f')} wall, {spread(ratio['cpu'], '.3f')} CPU time "
          f"(epochs of {steps} steps, {args.repeats} rounds); target <= 1.05")
    print("overhead per step: " + ", ".join(f"{spread(v, '.2f')} ms from {k}" for k, v in overhead_ms.items())
          + "; target <= 1 ms")
    if args.json:
        raw = {"environment": env, "settings": vars(args), "steps": steps, "stamps_wall_cpu_s": stamps,
               "epoch_wall_s": walls, "epoch_cpu_s": cpus, "median_step_ms": step_ms, "ratio": ratio,
               "overhead_ms_per_step": overhead_ms}
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
