#!/usr/bin/env bash
# Every CPU latency table of docs/studies/latency.md in one go, about 90 minutes on 2 CPU cores.
#   bash scripts/latency_tables.sh [OUT_DIR]            # default outputs/latency
# OUT_DIR gets each benchmark's JSON record and printed table, the eval sweep's run directories and
# its report. The JSON records are the study's data: results/latency/ keeps them under these names.
# Run it on a quiet machine: nothing else may train or test meanwhile (pause training with
# kill -STOP). Each script measures other processes' CPU share, waits for a quiet moment and flags
# what it timed under contention, but a flagged table is a table to take again, not to quote.
set -euo pipefail
out=${1:-outputs/latency}
mkdir -p "$out"
step() { echo "[latency_tables $(date -u +%H:%M:%S)] $* (load $(cut -d' ' -f1 /proc/loadavg))" >&2; }

step "runtimes x conv x width, 224 px (throughput at batch 16: batch 64 of standard w1.0 is 6 s a call)"
python scripts/bench_runtimes.py --sizes 224 --batch-size 16 --rounds 5 --json "$out/runtimes_224.json" > "$out/runtimes_224.md"
step "runtimes x conv x width, 28 px"
python scripts/bench_runtimes.py --sizes 28 --batch-size 64 --rounds 5 --json "$out/runtimes_28.json" > "$out/runtimes_28.md"
step "time per layer type, width 1.0, 224 px (eager and onnxruntime profilers)"
python scripts/layer_time.py --passes 20 --json "$out/layer_time.json" > "$out/layer_time.md" 2> >(grep -v '^USDT\|gpuGetDeviceCount' >&2)
step "parity: ours / timm, ours / torchvision, 1 and 2 threads, 11 rounds"
python scripts/bench_models.py --repeats 11 --threads 1 2 --json "$out/parity.json" > "$out/parity.md"
step "parity with glibc's allocator defaults, 1 thread"
python scripts/bench_models.py --repeats 11 --threads 1 --allocator system --min-run-time 0.3 --json "$out/parity_system.json" > "$out/parity_system.md"
step "a sweep of eval runs for the cost-predicts-latency figure: eager and onnxruntime, 16 networks each"
rm -rf "$out/eval_sweep"
python eval.py -m hydra.sweep.dir="$out/eval_sweep" data=synthetic data.in_chans=3 data.num_classes=1000 \
    model=conv,dsconv model.width=0.25,0.5,0.75,1.0 data.image_size=128,224 \
    latency.runtime=eager,onnxruntime latency.throughput_batch_size=16 > "$out/eval_sweep.log" 2>&1
python -m dsnet.report "$out/eval_sweep" --out "$out/report" > "$out/report.log"
step "the README's speed rows with the allocator on: data path, train loop vs plain PyTorch"
python scripts/bench_data.py --threads 1 > "$out/bench_data.md" 2>&1
python scripts/bench_train.py --threads 1 --repeats 11 > "$out/bench_train.md" 2>&1
step "all done"
