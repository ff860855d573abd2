"""Train a backbone and test it: ``python train.py [overrides]``; see configs/train.yaml."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import dsnet.config  # noqa: F401  (registers the ${dsnet.*} resolvers before Hydra composes)
from dsnet.guards import TrainInputError
from dsnet.task import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except TrainInputError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records it for this job and runs the others
        sys.exit(f"train.py: error: {err}")  # the user's to fix: one line, no traceback
    return metrics.get(cfg.get("optimized_metric", "test/acc"))  # what a Hydra sweeper (e.g. Optuna) optimises


if __name__ == "__main__":
    main()
