"""Shared fixtures: the real configs, composed with Hydra's compose API and shrunk to seconds.

``compose_train(*overrides, run_dir=...)`` is ``configs/train.yaml`` plus :data:`TINY` (synthetic
16 px data, a quarter-width network, one epoch) plus your overrides; ``paths.*`` point into
``run_dir``. ``train_cfg`` is the same bound to pytest's ``tmp_path``. ``run_cli`` runs
``python train.py`` as its own process for what needs a real command line (multirun, DDP, launchers).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import entrypoints
from dsnet.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]

# One thread per test process: the suite runs one worker per core, and a worker whose OpenMP threads
# share a core with other work waits at every barrier (a tiny training run took 157 s instead of 8 s
# beside a second job on this 2-core machine).
torch.set_num_threads(1)
register_resolvers()  # the configs' ${dsnet.*}, for every test that composes them
CONFIG_DIR = ROOT / "configs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests first, then those with the most tests; a file's own order kept.

    xdist hands whole files to the workers in this order (``--no-loadscope-reorder``, pyproject.toml).
    Its own order, most tests first, left the files of a few long tests (SLURM, DDP, interrupted
    runs) for the end, where one worker waited on their processes while the other had nothing left
    (the last 90 s kept two cores 15-20% busy); started first, their waits overlap the short files' work.
    """
    slow, tests = Counter(), Counter()
    for item in items:
        tests[item.path] += 1
        slow[item.path] += item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: (-slow[item.path], -tests[item.path]))  # stable: files stay contiguous

# Small enough for seconds on 2 CPU cores, big enough for every code path (several batches,
# a validation split, top-5 on 10 classes).
TINY = (
    "data=synthetic",
    "data.image_size=16",
    "data.num_train=192",
    "data.val_size=64",
    "data.num_test=64",
    "data.batch_size=32",
    "model.width=0.25",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
)


def write_image_tree(root: Path, counts: dict[str, int]) -> None:
    """ImageFolder tree root/{train,val}/<class>/ with PNG and JPEG images of varied sizes and aspects."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = (20 + 3 * i, 28 + 2 * i)  # (height, width): landscape, then square, then portrait
                image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
                image.save(root / split / name / (f"{i:03d}.JPEG" if i % 2 else f"{i:03d}.png"))


def compose_train(*overrides: str, run_dir: Path | str, config_name: str = "train", tiny: bool = True) -> DictConfig:
    """``configs/<config_name>.yaml`` composed with TINY (when ``tiny``) and ``overrides``."""
    paths = (f"paths.output_dir={run_dir}", f"paths.log_dir={run_dir}", f"paths.data_dir={run_dir}/data")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*(TINY if tiny else ()), *paths, *overrides])


@pytest.fixture
def train_cfg(tmp_path):
    """Factory: ``train_cfg(*overrides)`` -> the tiny train config writing into ``tmp_path``."""
    return lambda *overrides: compose_train(*overrides, run_dir=tmp_path)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> entrypoints.Result:
    """``python train.py *args`` from ``cwd``, in a process forked from the warm fork server
    (tests/entrypoints.py); the result holds the exit status and the terminal's text."""
    return entrypoints.run("train.py", *args, cwd=cwd, env=env, timeout=timeout)


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV the report wrote, as one dict per row (values as the file spells them)."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
