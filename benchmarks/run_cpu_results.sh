#!/usr/bin/env bash
# Reproduce the committed CPU results from a finished training run (RUN_DIR/best.safetensors):
#   publish the reference checkpoint, build it for the cpu target (and segformer-b0 for jetson-orin as well),
#   compare the cpu bundle's default variant with OpenVINO + NNCF defaults (benchmarks/cpu_openvino.py),
#   and keep each bundle's report under benchmarks/results/builds/ and its calibration set under calibration/.
# Usage: EDGESEG_DATA=../shared/data bash benchmarks/run_cpu_results.sh MODEL [RUN_DIR [PREVIOUS_RUN...]]
#   RUN_DIR defaults to runs/MODEL; PREVIOUS_RUNs are the runs it continued from, oldest first.
#   NOTE="..." sets the published note; MAX_MIOU_DROP (default 1.0) the INT8 accuracy budget in points.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
run_dir=${2:-runs/$model}
previous=()
for run in "${@:3}"; do previous+=(--previous-run "$run"); done
budget=${MAX_MIOU_DROP:-1.0}

python benchmarks/publish_reference.py "$run_dir" --model "$model" "${previous[@]}" \
    --note "${NOTE:-trained from scratch on a shared 2-core CPU; see docs/TRAINING.md}"

keep_reports() {  # bundle directory, name under benchmarks/results/builds/
    mkdir -p "benchmarks/results/builds/$2"
    for file in report.json report.md manifest.json README.md target.toml plan.json build_engine.sh; do
        if [[ -f "$1/$file" ]]; then cp "$1/$file" "benchmarks/results/builds/$2/"; fi
    done
}

edgeseg build --model "$model" --target cpu --max-miou-drop "$budget" --out "bundles/$model-cpu" --force
keep_reports "bundles/$model-cpu" "$model-cpu"
cp "bundles/$model-cpu/calibration.json" "calibration/$model-camvid-class-balanced-200.json"
if python -c "import openvino, nncf" 2>/dev/null; then  # the bundle's default vs OpenVINO + NNCF defaults
    python benchmarks/cpu_openvino.py "bundles/$model-cpu" --threads 1 --rounds 40
fi
if [[ "$model" == segformer-b0 ]]; then
    edgeseg build --model "$model" --target jetson-orin --max-miou-drop "$budget" \
        --out "bundles/$model-jetson-agx-orin" --force
    keep_reports "bundles/$model-jetson-agx-orin" "$model-jetson-agx-orin"
fi
