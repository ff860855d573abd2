"""Can the data path keep the model fed? Data images/s against training images/s, side by side.

    python scripts/bench_data.py --threads 1               # CPU, the default Fashion-MNIST config
    python scripts/bench_data.py --device cuda data.num_workers=8   # GPU; Hydra overrides go last

Three rates, each in images per second, measured alternately in every round so that drift in the
machine's load hits all of them:

- ``memory``: the in-memory loader (``data.loader=memory``): the training DataLoader (one gather per
  batch), the copy to ``--device`` and ``transform_batch`` (per-sample crop + flip, normalisation
  on the device): exactly what ``on_after_batch_transfer`` hands to ``training_step``;
- ``torchvision``: the same through the per-sample loader (``data.loader=torchvision``: a PIL image
  and a ``transforms.v2`` pipeline per image, ``data.num_workers`` worker processes);
- ``train``: one training step of the model (forward, label-smoothed cross-entropy, backward, the
  configured optimizer's step) on a fixed batch from the memory path, the input converted to
  channels-last per step when the config asks for it, as ``ClassifierModule.forward`` does.

The model and data are the real configs (``configs/train.yaml``) with ``model.width=0.25``, the
smallest default width, whose fast steps make this the hardest case for the data path. The ratios
are medians over rounds of per-round ratios: ``memory / train`` (target >= 20x: the loader then
costs under 5% of a step even without overlap) and ``memory / torchvision`` (target >= 3x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import dsnet.config  # noqa: F401  (the ${dsnet.*} resolvers the configs use)
from dsnet.measure import environment

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BENCH_OVERRIDES = ("model.width=0.25",)  # the smallest default width: the fastest step to keep fed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where batches are transformed and trained")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--memory-batches", type=int, default=None,
                        help="batches per timed memory-loader block (default: one whole epoch)")
    parser.add_argument("--torchvision-batches", type=int, default=40, help="batches per timed per-sample block")
    parser.add_argument("--train-steps", type=int, default=10, help="optimizer steps per timed training block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches or steps before every block")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml, e.g. data.batch_size=256")
    args = parser.parse_args()
    for name in ("repeats", "torchvision_batches", "train_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def sync(device: torch.device) -> None:
    """Waits for queued device work, so a clock read covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the three timed blocks: each returns images per second ----------------------------------------


def to_device(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


def data_rate(datamodule, device: torch.device, num_batches: int | None, warmup: int) -> float:
    """Images/s of ``num_batches`` training batches (None: the whole epoch), loader to transformed batch."""
    loader = datamodule.train_dataloader()
    for _, batch in zip(range(warmup), loader):  # starts workers, fills allocator caches
        datamodule.transform_batch(to_device(batch, device), train=True)
    limit = len(loader) if num_batches is None else num_batches
    images = 0
    sync(device)
    start = time.perf_counter()
    for _, batch in zip(range(limit), loader):  # a fresh iterator, as at the start of an epoch
        x, _ = datamodule.transform_batch(to_device(batch, device), train=True)
        images += x.shape[0]
    sync(device)
    return images / (time.perf_counter() - start)


class TrainStep:
    """Forward, loss, backward and optimizer step of the configured model on one fixed batch."""

    def __init__(self, cfg, batch, device: torch.device) -> None:
        self.channels_last = bool(cfg.channels_last)
        self.net = instantiate(cfg.model).to(device).train()
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = instantiate(cfg.optim.optimizer)(params=self.net.parameters())
        self.label_smoothing = float(cfg.module.label_smoothing)
        self.x, self.y = batch

    def __call__(self) -> None:
        x = self.x.contiguous(memory_format=torch.channels_last) if self.channels_last else self.x
        loss = F.cross_entropy(self.net(x), self.y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def train_rate(step: TrainStep, device: torch.device, num_steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    sync(device)
    return num_steps * step.x.shape[0] / (time.perf_counter() - start)


# --- rounds, summary -----------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    """Median and (min-max) spread of one quantity over the rounds."""
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*BENCH_OVERRIDES, *args.overrides])
        cfg_tv = compose("train", overrides=[*BENCH_OVERRIDES, *args.overrides, "data.loader=torchvision"])
    cfg.data.loader = "memory"  # whatever the overrides said: this side is the in-memory path
    memory, per_sample = instantiate(cfg.data), instantiate(cfg_tv.data)
    for datamodule in (memory, per_sample):
        datamodule.prepare_data()
        datamodule.setup("fit")
    batch = memory.transform_batch(to_device(next(iter(memory.train_dataloader())), device), train=True)
    step = TrainStep(cfg, batch, device)

    env = environment(args.device)
    d = cfg.data
    print(f"# bench_data  device={args.device} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"data={memory.name} image_size={d.image_size} batch_size={d.batch_size} "
          f"torchvision num_workers={cfg_tv.data.num_workers} model={cfg.model.arch}/{cfg.model.conv} "
          f"width={cfg.model.width} channels_last={cfg.channels_last} "
          f"optimizer={cfg.optim.optimizer._target_}")
    print("# " + "  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"# load average (1/5/15 min) at start: {load_average()}")

    blocks = {
        "memory": lambda: data_rate(memory, device, args.memory_batches, args.warmup),
        "torchvision": lambda: data_rate(per_sample, device, args.torchvision_batches, args.warmup),
        "train": lambda: train_rate(step, device, args.train_steps, args.warmup),
    }
    rates: dict[str, list[float]] = {name: [] for name in blocks}
    for round_idx in range(args.repeats):
        names = list(blocks)[round_idx % len(blocks):] + list(blocks)[:round_idx % len(blocks)]  # rotate who goes first
        for name in names:
            rates[name].append(blocks[name]())

    data_over_train = [m / t for m, t in zip(rates["memory"], rates["train"])]
    memory_over_tv = [m / t for m, t in zip(rates["memory"], rates["torchvision"])]
    print("| path | images/s, median (min-max) over rounds |")
    print("|---|---:|")
    for name, label in (("memory", "memory loader + device transform"),
                        ("torchvision", "per-sample torchvision loader"),
                        ("train", "training step (fwd+bwd+opt)")):
        print(f"| {label} | {summary(rates[name])} |")
    print(f"# load average (1/5/15 min) at end: {load_average()}")
    ratio_line = "ratio {}: {:.1f}x (min {:.1f}x, max {:.1f}x over {} rounds; target >= {}x)"
    print(ratio_line.format("data/train", statistics.median(data_over_train), min(data_over_train),
                            max(data_over_train), args.repeats, 20))
    print(ratio_line.format("memory/torchvision", statistics.median(memory_over_tv), min(memory_over_tv),
                            max(memory_over_tv), args.repeats, 3))
    if args.json:
        raw = {"environment": env, "settings": vars(args), "images_per_s": rates,
               "ratio_data_over_train": data_over_train, "ratio_memory_over_torchvision": memory_over_tv}
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
