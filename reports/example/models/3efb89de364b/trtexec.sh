#!/usr/bin/env bash
# Build and time the TensorRT engine on the target (Jetson: lock clocks first).
set -euo pipefail
cd "$(dirname "$0")"
if command -v nvpmodel >/dev/null; then sudo nvpmodel -m 0 && sudo jetson_clocks; fi
# trtexec's banner: [TensorRT v100300] is 10.3.0, [TensorRT v8601] is 8.6.1
v=$(trtexec --help 2>&1 | sed -n 's/.*\[TensorRT v\([0-9]*\)\].*/\1/p' | head -n 1 || true)
if [ -n "$v" ] && [ "${#v}" -lt 6 ]; then
  # TensorRT < 10: weak typing, every fp32/fp16 layer constrained to its precision
  trtexec --onnx=model.onnx --fp16 --int8 --precisionConstraints=obey --layerPrecisions=/blocks/blocks.2/module/expand/expand.0/Conv:fp16,/blocks/blocks.2/module/dw/dw.0/Conv:fp16,/blocks/blocks.2/module/project/project.0/Conv:fp16,/blocks/blocks.6/expand/expand.0/Conv:fp32,/blocks/blocks.6/dw/dw.0/Conv:fp32,/blocks/blocks.6/project/project.0/Conv:fp32,/blocks/blocks.8/expand/expand.0/expand.0.0/Conv:fp32,/blocks/blocks.8/expand/expand.0/expand.0.1/Conv:fp32,/blocks/blocks.8/dw/dw.0/Conv:fp32,/blocks/blocks.8/project/project.0/project.0.0/Conv:fp32,/blocks/blocks.8/project/project.0/project.0.1/Conv:fp32,/blocks/blocks.9/module/expand/expand.0/Conv:fp16,/blocks/blocks.9/module/dw/dw.0/Conv:fp16,/blocks/blocks.9/module/project/project.0/Conv:fp16,/head/module/module.0/Conv:fp16,/classifier/module/Gemm:fp16 --layerOutputTypes=/blocks/blocks.2/module/expand/expand.0/Conv:fp16,/blocks/blocks.2/module/dw/dw.0/Conv:fp16,/blocks/blocks.2/module/project/project.0/Conv:fp16,/blocks/blocks.6/expand/expand.0/Conv:fp32,/blocks/blocks.6/dw/dw.0/Conv:fp32,/blocks/blocks.6/project/project.0/Conv:fp32,/blocks/blocks.8/expand/expand.0/expand.0.0/Conv:fp32,/blocks/blocks.8/expand/expand.0/expand.0.1/Conv:fp32,/blocks/blocks.8/dw/dw.0/Conv:fp32,/blocks/blocks.8/project/project.0/project.0.0/Conv:fp32,/blocks/blocks.8/project/project.0/project.0.1/Conv:fp32,/blocks/blocks.9/module/expand/expand.0/Conv:fp16,/blocks/blocks.9/module/dw/dw.0/Conv:fp16,/blocks/blocks.9/module/project/project.0/Conv:fp16,/head/module/module.0/Conv:fp16,/classifier/module/Gemm:fp16 --useCudaGraph --noDataTransfers --useSpinWait --warmUp=500 --iterations=500 --avgRuns=100 --exportLayerInfo=layers.json --profilingVerbosity=detailed --saveEngine=model.engine | tee trtexec.log
else
  # TensorRT >= 10: strongly typed, the ONNX's types and Q/DQ decide every layer's precision
  trtexec --onnx=model.onnx --stronglyTyped --useCudaGraph --noDataTransfers --useSpinWait --warmUp=500 --iterations=500 --avgRuns=100 --exportLayerInfo=layers.json --profilingVerbosity=detailed --saveEngine=model.engine | tee trtexec.log
fi
