#!/usr/bin/env bash
# Reproduce the committed CPU results from finished training runs (runs/<model>/best.safetensors):
#   publish the reference checkpoint, build it for the cpu target (and segformer-b0 for jetson-orin),
#   and keep each bundle's report under benchmarks/results/builds/.
# Usage: EDGESEG_DATA=../shared/data bash benchmarks/run_cpu_results.sh MODEL [MAX_MIOU_DROP]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
budget=${2:-1.0}
python benchmarks/publish_reference.py "runs/$model" --model "$model" \
    --note "${NOTE:-trained from scratch on a shared 2-core CPU; see docs/TRAINING.md}"
edgeseg build --model "$model" --target cpu --max-miou-drop "$budget" --out "bundles/$model-cpu"
mkdir -p "benchmarks/results/builds/$model-cpu"
cp "bundles/$model-cpu/report.json" "bundles/$model-cpu/report.md" "bundles/$model-cpu/manifest.json" \
   "benchmarks/results/builds/$model-cpu/"
cp "bundles/$model-cpu/calibration.json" "calibration/$model-camvid-class-balanced-200.json"
