"""Evaluate a backbone: ``python eval.py [ckpt_path=...] [overrides]``; see configs/eval.yaml."""

import sys

import hydra
from omegaconf import DictConfig

from dsnet.allocator import AllocatorError, configure as configure_allocator
import dsnet.config  # noqa: F401  (registers the ${dsnet.*} resolvers before Hydra composes)
from dsnet.evaluate import EvalInputError, evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        configure_allocator(cfg.get("allocator", "keep_freed"))  # process-wide: the entry point's to set
        results, _ = evaluate(cfg)
    except (EvalInputError, AllocatorError) as err:
        # A bad checkpoint or data override is the user's to fix: one line, no traceback.
        sys.exit(f"eval.py: error: {err}")
    return results["top1"]


if __name__ == "__main__":
    main()
