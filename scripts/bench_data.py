"""Can the data path keep the model fed? Data images/s against training images/s, side by side.

    python scripts/bench_data.py --threads 1               # CPU, the default Fashion-MNIST config
    python scripts/bench_data.py --device cuda data.num_workers=8   # GPU; Hydra overrides go last
    python scripts/bench_data.py --threads 1 --imagenet-only --imagenet            # synthetic JPEG tree
    python scripts/bench_data.py --threads 1 --imagenet ~/data/imagenet100        # a real subset

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

With ``--imagenet [DIR]``, a second comparison on an ImageNet-style tree (``configs/data/
imagenet_subset.yaml``, its ``image_size`` and ``batch_size``; ``--imagenet-workers`` decoding
workers): the per-sample torchvision loader, which decodes every JPEG in every epoch, against the
memory loader reading the decoded cache (``dsnet.data.decoded_cache``), both per training epoch, as
above. The cache is built once, untimed in the rounds; its one-time build rate and the rate of
opening it again in a later run are printed beside. Without DIR, ``--imagenet-images`` synthetic
375x500 JPEGs (8 classes) are written to a temporary directory first, so the comparison always runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from dsnet import allocator
from dsnet.config import register_resolvers
from dsnet.environment import environment

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
    parser.add_argument("--allocator", default="keep_freed", choices=["keep_freed", "system"],
                        help="dsnet.allocator for this process, as train.py sets it (both sides share it)")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("--imagenet", nargs="?", const="synthetic", metavar="DIR",
                        help="also compare JPEG decoding per epoch with the decoded cache on this ImageFolder "
                             "tree (no DIR: a synthetic JPEG tree in a temporary directory)")
    parser.add_argument("--imagenet-only", action="store_true", help="run only the --imagenet comparison")
    parser.add_argument("--imagenet-images", type=int, default=512, help="images of the synthetic JPEG tree")
    parser.add_argument("--imagenet-workers", type=int, default=0,
                        help="decoding worker processes of the ImageNet comparison (both paths)")
    parser.add_argument("--cache-dir", help="decoded cache of the ImageNet comparison (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml, e.g. data.batch_size=256")
    args = parser.parse_args()
    if args.imagenet_only and not args.imagenet:
        parser.error("--imagenet-only needs --imagenet")
    for name in ("repeats", "torchvision_batches", "train_steps", "imagenet_images"):
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


def data_rate(datamodule, device: torch.device, num_batches: int | None, warmup: int, transform: bool = True) -> float:
    """Images/s of ``num_batches`` training batches (None: the whole epoch), loader to transformed batch
    (to the batch on ``device`` when not ``transform``)."""
    loader = datamodule.train_dataloader()
    finish = (lambda b: datamodule.transform_batch(b, train=True)) if transform else (lambda b: b)
    for _, batch in zip(range(warmup), loader):  # starts workers, fills allocator caches
        finish(to_device(batch, device))
    limit = len(loader) if num_batches is None else num_batches
    images = 0
    sync(device)
    start = time.perf_counter()
    for _, batch in zip(range(limit), loader):  # a fresh iterator, as at the start of an epoch
        x, _ = finish(to_device(batch, device))
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


def bench_default(args: argparse.Namespace, device: torch.device) -> dict:
    """The three blocks on the configured data set; prints the table and ratios, returns raw numbers."""
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

    d = cfg.data
    print(f"# bench_data  device={args.device} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"data={memory.name} image_size={d.image_size} batch_size={d.batch_size} "
          f"torchvision num_workers={cfg_tv.data.num_workers} model={cfg.model.arch}/{cfg.model.conv} "
          f"width={cfg.model.width} channels_last={cfg.channels_last} "
          f"optimizer={cfg.optim.optimizer._target_}")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment(args.device).items()))
    print(f"# load average (1/5/15 min) at start: {load_average()}")

    blocks = {
        "memory": lambda: data_rate(memory, device, args.memory_batches, args.warmup),
        "torchvision": lambda: data_rate(per_sample, device, args.torchvision_batches, args.warmup),
        "train": lambda: train_rate(step, device, args.train_steps, args.warmup),
    }
    rates = run_rounds(blocks, args.repeats)

    data_over_train = [m / t for m, t in zip(rates["memory"], rates["train"])]
    memory_over_tv = [m / t for m, t in zip(rates["memory"], rates["torchvision"])]
    print("| path | images/s, median (min-max) over rounds |")
    print("|---|---:|")
    for name, label in (("memory", "memory loader + device transform"),
                        ("torchvision", "per-sample torchvision loader"),
                        ("train", "training step (fwd+bwd+opt)")):
        print(f"| {label} | {summary(rates[name])} |")
    print(f"# load average (1/5/15 min) at end: {load_average()}")
    print(RATIO_LINE.format("data/train", statistics.median(data_over_train), min(data_over_train),
                            max(data_over_train), args.repeats, 20))
    print(RATIO_LINE.format("memory/torchvision", statistics.median(memory_over_tv), min(memory_over_tv),
                            max(memory_over_tv), args.repeats, 3))
    return {"images_per_s": rates, "ratio_data_over_train": data_over_train,
            "ratio_memory_over_torchvision": memory_over_tv}


RATIO_LINE = "ratio {}: {:.1f}x (min {:.1f}x, max {:.1f}x over {} rounds; target >= {}x)"


def run_rounds(blocks: dict, repeats: int) -> dict[str, list[float]]:
    """Every block once per round, rotating which goes first; {name: [images/s per round]}."""
    rates: dict[str, list[float]] = {name: [] for name in blocks}
    for round_idx in range(repeats):
        names = list(blocks)[round_idx % len(blocks):] + list(blocks)[:round_idx % len(blocks)]
        for name in names:
            rates[name].append(blocks[name]())
    return rates


# --- ImageNet subsets: JPEG decoding per epoch against the decoded cache --------------------------


def write_synthetic_jpegs(root: Path, num_images: int, num_classes: int = 8) -> None:
    """root/train/<class>/*.JPEG: ``num_images`` 375x500 JPEGs (ImageNet's most common size), quality 90.

    Smooth random colour fields plus mild noise: closer to photographs than pure noise, which
    compresses (and decodes) far worse than real images.
    """
    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = root / "train" / f"n{i % num_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3), dtype=np.int16)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.JPEG", quality=90)


def imagenet_configs(args: argparse.Namespace, tree: Path, cache_dir: Path):
    """(torchvision, memory-with-cache) data configs: ``configs/data/imagenet_subset.yaml`` on ``tree``."""
    common = [*BENCH_OVERRIDES, "data=imagenet_subset", f"data.data_dir={tree}", f"data.cache_dir={cache_dir}",
              f"data.num_workers={args.imagenet_workers}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg_tv = compose("train", overrides=[*common, "data.loader=torchvision"])
        cfg_cache = compose("train", overrides=[*common, "data.loader=memory"])
    return cfg_tv.data, cfg_cache.data


def bench_imagenet(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict:
    """Per-epoch images/s of the torchvision loader and of the memory loader over the decoded cache."""
    if args.imagenet == "synthetic":
        tree = workdir / "imagenet"
        write_synthetic_jpegs(tree, args.imagenet_images)
        origin = f"synthetic: {args.imagenet_images} JPEGs of 375x500 px, 8 classes, in a temporary dir"
    else:
        tree, origin = Path(args.imagenet).expanduser(), "given tree"
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else workdir / "cache"
    cfg_tv, cfg_cache = imagenet_configs(args, tree, cache_dir)
    per_sample = instantiate(cfg_tv)
    start = time.perf_counter()
    cached = instantiate(cfg_cache)
    cached.setup("fit")  # builds the cache, or reuses it when --cache-dir holds one already
    first_setup_s = time.perf_counter() - start
    logging.getLogger("dsnet.data.decoded_cache").setLevel(logging.WARNING)  # not once per round again
    per_sample.setup("fit")
    num_images = len(cached.dataset("train")) + len(cached.dataset("val"))

    def reopen() -> float:
        """A later run's setup: open the finished cache and copy the train and val rows to RAM."""
        begin = time.perf_counter()
        instantiate(cfg_cache).setup("fit")
        return num_images / (time.perf_counter() - begin)

    print(f"# imagenet  tree={tree} ({origin}) train images={len(per_sample.dataset('train'))} "
          f"image_size={cfg_tv.image_size} stored={cached.native_size} px batch_size={cfg_tv.batch_size} "
          f"num_workers={args.imagenet_workers} threads={torch.get_num_threads()} repeats={args.repeats}")
    print("# " + "  ".join(f"{k}={v}" for k, v in environment(args.device).items()))
    print(f"# first setup with the cache: {first_setup_s:.1f} s for {num_images} images (includes any build)")
    print(f"# load average (1/5/15 min) at start: {load_average()}")
    blocks = {
        "torchvision": lambda: data_rate(per_sample, device, None, args.warmup),
        "cache": lambda: data_rate(cached, device, None, args.warmup),
        "cache_loader": lambda: data_rate(cached, device, None, args.warmup, transform=False),
        "cache_reopen": reopen,
    }
    rates = run_rounds(blocks, args.repeats)
    ratio = [c / t for c, t in zip(rates["cache"], rates["torchvision"])]
    ratio_loader = [c / t for c, t in zip(rates["cache_loader"], rates["torchvision"])]
    print("| ImageNet path, per training epoch | images/s, median (min-max) over rounds |")
    print("|---|---:|")
    print(f"| per-sample torchvision loader (JPEG decode + RandomResizedCrop every epoch) | "
          f"{summary(rates['torchvision'])} |")
    print(f"| memory loader over the decoded cache + device transform | {summary(rates['cache'])} |")
    print(f"| memory loader over the decoded cache, uint8 batches (device transform left out) | "
          f"{summary(rates['cache_loader'])} |")
    print(f"| (once per run) open the cache, copy train+val rows to RAM | {summary(rates['cache_reopen'])} |")
    print(f"# load average (1/5/15 min) at end: {load_average()}")
    print(RATIO_LINE.format("cache/torchvision", statistics.median(ratio), min(ratio), max(ratio),
                            args.repeats, 3))
    # What the cache itself replaces (the decode), without the crop/normalise that a GPU would do.
    print(RATIO_LINE.format("cache-loader/torchvision", statistics.median(ratio_loader), min(ratio_loader),
                            max(ratio_loader), args.repeats, 3))
    return {"tree": str(tree), "origin": origin, "num_images": num_images, "first_setup_s": first_setup_s,
            "images_per_s": rates, "ratio_cache_over_torchvision": ratio,
            "ratio_cache_loader_over_torchvision": ratio_loader}


def main() -> None:
    args = parse_args()
    register_resolvers()  # the configs composed below use ${dsnet.*}
    allocator.configure(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # The decoded cache logs where it is, its size and its build rate: shown as comment lines.
    logging.basicConfig(format="# %(message)s", stream=sys.stdout)
    logging.getLogger("dsnet.data.decoded_cache").setLevel(logging.INFO)
    raw: dict = {"environment": environment(args.device), "settings": vars(args)}
    if not args.imagenet_only:
        raw |= bench_default(args, device)
    if args.imagenet:
        with tempfile.TemporaryDirectory(prefix="bench_data_") as workdir:
            raw["imagenet"] = bench_imagenet(args, device, Path(workdir))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
