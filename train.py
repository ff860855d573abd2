"""Train a backbone and test it: ``python train.py [overrides]``; see configs/train.yaml."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dsnet.allocator import AllocatorError, configure as configure_allocator
import dsnet.config  # noqa: F401  (registers the ${dsnet.*} resolvers before Hydra composes)
from dsnet.guards import TrainInputError
from dsnet.task import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        configure_allocator(cfg.get("allocator", "keep_freed"))  # process-wide: the entry point's to set
        metrics, _ = train(cfg)
    except (TrainInputError, AllocatorError) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records it for this job and runs the others
        sys.exit(f"train.py: error: {err}")  # the user's to fix: one line, no traceback
    return metrics["test/acc"]  # what a Hydra sweeper (e.g. Optuna) would optimise


if __name__ == "__main__":
    main()
