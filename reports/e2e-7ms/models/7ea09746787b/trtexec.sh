#!/usr/bin/env bash
# Build and time the TensorRT engine on the target (Jetson: lock clocks first).
set -euo pipefail
cd "$(dirname "$0")"
if command -v nvpmodel >/dev/null; then sudo nvpmodel -m 0 && sudo jetson_clocks; fi
trtexec --onnx=model.onnx --int8 --fp16 --useCudaGraph --noDataTransfers --useSpinWait --warmUp=500 --iterations=500 --avgRuns=100 --exportLayerInfo=layers.json --profilingVerbosity=detailed --saveEngine=model.engine | tee trtexec.log
