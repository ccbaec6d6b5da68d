#!/usr/bin/env bash
# Build the TensorRT engine of this edgeseg bundle ON THE DEVICE: any jetson-orin module; the module is resolved here (device tree, memory; EDGESEG_MODULE=<id> overrides) and its plan applied.
# Every path is relative to this folder, so the bundle can be copied or moved anywhere.
# The Python alternative, which also plans again for the installed TensorRT and writes the sidecar
# edgeseg's runner needs:  edgeseg engine build .
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/src/tensorrt/bin"  # where JetPack puts trtexec
if ! command -v trtexec >/dev/null 2>&1; then
    echo "build_engine.sh: trtexec not found; install TensorRT (JetPack on a Jetson)" >&2
    exit 127
fi
edgeseg_module() {
    if [ -n "${EDGESEG_MODULE:-}" ]; then echo "$EDGESEG_MODULE"; return 0; fi
    local proc="${EDGESEG_PROC:-/proc}" model compatible mem_kb
    model="$(tr -d '\0' < "$proc/device-tree/model" 2>/dev/null || true)"
    compatible="$(tr '\0' ' ' < "$proc/device-tree/compatible" 2>/dev/null || true)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' "$proc/meminfo" 2>/dev/null || true)"
    mem_kb="${mem_kb:-0}"
    if { _edgeseg_has "$model" 'AGX Orin' || _edgeseg_has "$compatible" 'p3701-0000' || _edgeseg_has "$compatible" 'p3701-0004'; } && [ "$mem_kb" -gt 0 ] && [ "$mem_kb" -le 41943040 ]; then echo jetson-agx-orin-32gb; return 0; fi
    if { _edgeseg_has "$model" 'AGX Orin' || _edgeseg_has "$compatible" 'p3701'; }; then echo jetson-agx-orin; return 0; fi
    if { _edgeseg_has "$model" 'Orin NX' || _edgeseg_has "$compatible" 'p3767-0001'; } && [ "$mem_kb" -gt 0 ] && [ "$mem_kb" -le 10485760 ]; then echo jetson-orin-nx-8gb; return 0; fi
    if { _edgeseg_has "$model" 'Orin NX' || _edgeseg_has "$compatible" 'p3767-0000'; }; then echo jetson-orin-nx; return 0; fi
    if { _edgeseg_has "$model" 'Orin Nano' || _edgeseg_has "$compatible" 'p3767-0004'; } && [ "$mem_kb" -gt 0 ] && [ "$mem_kb" -le 5242880 ]; then echo jetson-orin-nano-4gb; return 0; fi
    if { _edgeseg_has "$model" 'Orin Nano' || _edgeseg_has "$compatible" 'p3767-0003' || _edgeseg_has "$compatible" 'p3767-0005'; }; then echo jetson-orin-nano; return 0; fi
    echo "build_engine.sh: this device (model '$model') matches no module of jetson-orin; set EDGESEG_MODULE to one of: jetson-agx-orin-32gb jetson-agx-orin jetson-orin-nx-8gb jetson-orin-nx jetson-orin-nano-4gb jetson-orin-nano" >&2
    return 1
}
_edgeseg_has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
module="$(edgeseg_module)"
echo "build_engine.sh: module $module"
case "$module" in
    jetson-agx-orin-32gb) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:4096M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-agx-orin.cache --shapes=pixel_values:1x3x360x480 ;;
    jetson-agx-orin) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:4096M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-agx-orin.cache --shapes=pixel_values:1x3x360x480 ;;
    jetson-orin-nx-8gb) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:1024M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-orin-nx.cache --shapes=pixel_values:1x3x360x480 ;;
    jetson-orin-nx) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:2048M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-orin-nx.cache --shapes=pixel_values:1x3x360x480 ;;
    jetson-orin-nano-4gb) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:512M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-orin-nano.cache --shapes=pixel_values:1x3x360x480 ;;
    jetson-orin-nano) trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:1024M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-orin-nano.cache --shapes=pixel_values:1x3x360x480 ;;
    *) echo "build_engine.sh: no plan for module $module" >&2; exit 1 ;;
esac
# trtexec writes no sidecar; edgeseg's runner refuses an engine without one (it records the GPU and
# TensorRT that built it and the model's preprocessing).
if command -v edgeseg >/dev/null 2>&1; then
    edgeseg engine sidecar model.int8.engine || echo "build_engine.sh: built model.int8.engine but could not write its sidecar" >&2
else
    echo "built model.int8.engine; to run it with edgeseg: edgeseg engine sidecar model.int8.engine"
fi
