#!/usr/bin/env bash
# The converged study's GPU share, in one call on a one-GPU machine:
#   bash scripts/gpu_study.sh OUT_DIR [TRAIN_MINUTES] [BENCH_MINUTES]
# 1. What study.py's stages have left (on the study's CPU machine: Table 6's runs it had no time
#    for, and table4_w1, the standard arm at width 1.0, which only a GPU trains in time) all at
#    once: `study.py run --workers 8 --threads 2` with trainer=gpu (fp32 weights, cuDNN's default
#    TF32 convolutions). Beside them, the device check: Table 6's dsconv w1.0 seed 2, trained on the
#    CPU, trained again here, so that the report can say what the device alone moves.
#    At TRAIN_MINUTES (default 7) the runs left are stopped (SIGTERM: last.ckpt, then exit).
# 2. Latency on the GPU (scripts/bench_runtimes.py --device cuda): eager fp32 and bf16, then
#    torch.compile fp32 with what is left of BENCH_MINUTES (default 3); timed only after training.
# OUT_DIR gets: runs.tgz (the runs' small files as study.py collect copies them, and the device
# check's), one <stage>__<run>.tar per finished run whose best checkpoint, without its optimizer
# state, fits in 15 MiB (for study.py evaluate back on the CPU machine; standard w1.0's 113 MB stays),
# latency.tgz (the tables gpu_<runtime>_<precision>.md/.json and study.log), and study.log: at most
# 8 files, so that a machine that returns only a few brings them all.
# Back on the study's machine: tar -xzf runs.tgz -C docs/results/converged; study.py restore;
# for t in *.tar; do tar -xf $t -C $DSNET_STUDY_DIR; done; study.py evaluate; study.py report.
set -euo pipefail
out=$(realpath "$1")
train_s=$(( ${2:-7} * 60 )); bench_s=$(( ${3:-3} * 60 ))
runs=${DSNET_STUDY_DIR:-/tmp/dsnet_gpu_study/converged}
check=$(dirname "$runs")/device_check
step() { echo "[gpu_study $(date -u +%H:%M:%S)] $*" >&2; }
mkdir -p "$out" "$runs" "$check"
step "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
python3 scripts/study.py restore --runs-dir "$runs" >&2
gpu=(--extra trainer=gpu --extra trainer.precision=32-true)

step "training: study.py run --workers 8 --threads 2 and the device check, for at most $((train_s / 60)) min"
start=$(date +%s)
setsid python3 scripts/study.py run --runs-dir "$runs" --workers 8 --threads 2 "${gpu[@]}" > "$out/study.log" 2>&1 &
runner=$!
# the device check: the CPU run's own overrides (its .hydra/overrides.yaml), on the GPU
cpu_run=docs/results/converged/runs/table6/dsconv_w1_lr0.8_e30_seed2
mapfile -t overrides < <(python3 -c "import sys, yaml; print('\n'.join(o for o in yaml.safe_load(open(sys.argv[1]))
                                     if not o.startswith('ckpt_path')))" "$cpu_run/.hydra/overrides.yaml")
OMP_NUM_THREADS=2 setsid python3 train.py -m "${overrides[@]}" trainer=gpu trainer.precision=32-true \
    hydra.sweep.dir="$check" > "$check/train.log" 2>&1 &
checker=$!
while (kill -0 $runner || kill -0 $checker) 2>/dev/null && (( $(date +%s) - start < train_s )); do sleep 5; done
for pid in $runner $checker; do
    kill -0 $pid 2>/dev/null && { step "time is up: SIGTERM to process group $pid"; kill -TERM -- -$pid || true; }
done
for _ in $(seq 60); do (kill -0 $runner || kill -0 $checker) 2>/dev/null || break; sleep 1; done
step "training done after $(( $(date +%s) - start )) s"
python3 scripts/study.py plan --runs-dir "$runs" "${gpu[@]}" 2>&1 | grep -v finished >&2 || true

step "packing"
stages=(); for d in runs/table6 runs/table4_w1; do [[ -d docs/results/converged/$d ]] && stages+=("$d"); done
tar -czf "$out/runs.tgz" --exclude='*.ckpt' -C docs/results/converged "${stages[@]}" -C "$(dirname "$check")" device_check
python3 - "$runs" "$out" <<'EOF'
"""One tar per finished run trained here: its best checkpoint without the optimizer state."""
import io, sys, tarfile
from pathlib import Path
import torch
sys.path.insert(0, "scripts")
from reproduce import best_checkpoint
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for metrics in sorted(runs.glob("*/*/metrics.json")):
    run = metrics.parent
    ckpt = best_checkpoint(run)
    if ckpt is None:  # restored from the results: trained on the CPU machine, which has its checkpoint
        continue
    full = torch.load(ckpt, map_location="cpu", weights_only=True)
    slim = {k: full[k] for k in ("state_dict", "epoch", "global_step", "pytorch-lightning_version") if k in full}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    if buffer.tell() > 15 * 2**20:
        print(f"{run.parent.name}/{run.name}: best checkpoint {buffer.tell() / 2**20:.0f} MiB, left here", file=sys.stderr)
        continue
    with tarfile.open(out / f"{run.parent.name}__{run.name}.tar", "w") as tar:
        info = tarfile.TarInfo(str(ckpt.relative_to(runs)))
        info.size, info.mtime = buffer.tell(), int(ckpt.stat().st_mtime)
        buffer.seek(0)
        tar.addfile(info, buffer)
    print(f"{run.parent.name}/{run.name}: {ckpt.name}, {info.size / 2**20:.1f} MiB", file=sys.stderr)
EOF

step "latency on the GPU, eager fp32 and bf16, then compile fp32 (quiet: nothing trains now)"
bench_start=$(date +%s)
tables=$(mktemp -d)
bench() {  # RUNTIME PRECISION: one table, cut off at what is left of BENCH_MINUTES
    local left=$(( bench_s - ($(date +%s) - bench_start) ))
    (( left > 20 )) || { step "no time left for $1 $2"; return 0; }
    timeout "$left" python3 scripts/bench_runtimes.py --device cuda --precision "$2" --runtimes "$1" \
        --sizes 224 28 --widths 0.25 0.5 1.0 --batch-size 256 --rounds 3 --min-run-time 0.2 \
        --json "$tables/gpu_$1_$2.json" > "$tables/gpu_$1_$2.md" || step "$1 $2: exit $?"
    cat "$tables/gpu_$1_$2.md" >&2
    cp "$out/study.log" "$tables/"
    tar -czf "$out/latency.tgz" -C "$tables" .  # after each table: a run cut off still brings the ones done
}
bench eager fp32
bench eager bf16
bench compile fp32
step "all done"
