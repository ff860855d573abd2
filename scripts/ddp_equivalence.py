"""Does a 2-process DDP run learn what a 1-process run learns? Both, side by side, for several seeds.

    python scripts/ddp_equivalence.py [--seeds 1 2 3] [--batch-size 64] [--out DIR] [override ...]

Per seed, two ``train.py`` runs on the CPU with the same global batch: one process with
``data.batch_size=B``, and ``trainer=ddp trainer.devices=2`` with ``data.batch_size=B/2`` per process.
The sampler gives rank r the items ``r, r+2, ...`` of the epoch's permutation, so the two ranks'
batches of a step together are exactly the 1-process run's batch of that step, and DDP's averaged
gradient is the 1-process gradient of the same images. What still differs is batch norm: each
process normalises with the statistics of its own 32 images (CPU has no SyncBatchNorm), so the runs
are statistically, not bitwise, equal. Random crops and flips are off by default, because each rank
draws its own (``data.crop_padding=0 data.hflip_prob=0``; pass other values to see their effect).

Prints per seed the validation (best epoch) and test top-1 of both runs and their difference, then
the mean and largest |difference| next to the seed-to-seed standard deviation of the 1-process
runs: a difference well inside the seed spread means DDP changes nothing a user could see.
Default: Fashion-MNIST, 4,000 training images, 2 epochs, MobileNetV1 dsconv width 0.25.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = (
    "data.train_size=4000",
    "data.crop_padding=0",
    "data.hflip_prob=0",
    "model.width=0.25",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
)


def train(run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """One ``train.py`` run with one thread per process; its ``metrics.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *COMMON, f"seed={seed}", "data.seed=${seed}",
           f"hydra.run.dir={run_dir}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ddp_equivalence.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size (even)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "ddp_equivalence")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for both runs")
    args = parser.parse_args()
    if args.batch_size < 2 or args.batch_size % 2:
        parser.error(f"--batch-size={args.batch_size} must be an even number >= 2 (two processes share it)")

    rows = []
    print(f"{'seed':>4}  {'val 1 proc':>10}  {'val 2 proc':>10}  {'diff pp':>8}  {'test 1 proc':>11}  "
          f"{'test 2 proc':>11}  {'diff pp':>8}", flush=True)
    for seed in args.seeds:
        one = train(args.out / f"seed{seed}_1proc", seed, [f"data.batch_size={args.batch_size}", *args.overrides])
        two = train(args.out / f"seed{seed}_2proc", seed, [
            f"data.batch_size={args.batch_size // 2}", "trainer=ddp", "trainer.devices=2",
            "trainer.accelerator=cpu", *args.overrides])
        row = {"seed": seed, "val_1": one["val/acc_best"], "val_2": two["val/acc_best"],
               "test_1": one["test/acc"], "test_2": two["test/acc"],
               "wall_s_1": one["wall_s"], "wall_s_2": two["wall_s"]}
        rows.append(row)
        print(f"{seed:>4}  {row['val_1']:>10.4f}  {row['val_2']:>10.4f}  {100 * (row['val_2'] - row['val_1']):>+8.2f}  "
              f"{row['test_1']:>11.4f}  {row['test_2']:>11.4f}  {100 * (row['test_2'] - row['test_1']):>+8.2f}",
              flush=True)

    for split in ("val", "test"):
        diffs = [100 * abs(r[f"{split}_2"] - r[f"{split}_1"]) for r in rows]
        spread = statistics.stdev(100 * r[f"{split}_1"] for r in rows) if len(rows) > 1 else float("nan")
        print(f"{split}: |diff| mean {statistics.mean(diffs):.2f} pp, max {max(diffs):.2f} pp; "
              f"1-process seed-to-seed sd {spread:.2f} pp (n = {len(rows)})")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
