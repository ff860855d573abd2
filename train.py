"""Train a backbone and test it: ``python train.py [overrides]``; see configs/train.yaml."""

import hydra
from omegaconf import DictConfig

from dsnet.allocator import configure as configure_allocator
from dsnet.cli import one_line_errors, run
from dsnet.config import register_resolvers
from dsnet.task import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("train.py"):
        configure_allocator(cfg.get("allocator", "keep_freed"))  # process-wide: the entry point's to set
        metrics, _ = train(cfg)
    return metrics.get(cfg.get("optimized_metric", "test/acc"))  # what a Hydra sweeper (e.g. Optuna) optimises


if __name__ == "__main__":
    register_resolvers()  # before Hydra composes; its launchers carry them into their job processes
    run(main, "train.py")  # a user error: one line "train.py: error: ...", exit status 1
