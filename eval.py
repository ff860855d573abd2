"""Evaluate a backbone: ``python eval.py [ckpt_path=...] [overrides]``; see configs/eval.yaml."""

import hydra
from omegaconf import DictConfig

from dsnet.allocator import configure as configure_allocator
from dsnet.cli import one_line_errors, run
from dsnet.config import register_resolvers
from dsnet.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("eval.py"):
        configure_allocator(cfg.get("allocator", "keep_freed"))  # process-wide: the entry point's to set
        results, _ = evaluate(cfg)
    return results["top1"]


if __name__ == "__main__":
    register_resolvers()  # before Hydra composes; its launchers carry them into their job processes
    run(main, "eval.py")  # a user error: one line "eval.py: error: ...", exit status 1
