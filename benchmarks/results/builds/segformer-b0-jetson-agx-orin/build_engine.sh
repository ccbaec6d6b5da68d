#!/usr/bin/env bash
# Build the TensorRT engine of this edgeseg bundle ON THE DEVICE: jetson-agx-orin, int8, planned for TensorRT 10.3.
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
trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --memPoolSize=workspace:4096M --builderOptimizationLevel=3 --timingCacheFile=timing.jetson-agx-orin.cache --shapes=pixel_values:1x3x360x480
# trtexec writes no sidecar; edgeseg's runner refuses an engine without one (it records the GPU and
# TensorRT that built it and the model's preprocessing).
if command -v edgeseg >/dev/null 2>&1; then
    edgeseg engine sidecar model.int8.engine || echo "build_engine.sh: built model.int8.engine but could not write its sidecar" >&2
else
    echo "built model.int8.engine; to run it with edgeseg: edgeseg engine sidecar model.int8.engine"
fi
