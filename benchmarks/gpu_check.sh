#!/usr/bin/env bash
# The GPU measurements of this project in one run, for a machine with a GPU: the device, the
# test suite's GPU paths, embedding throughput and a training step at 32 / bf16 / 16 bits, the
# exported model on ONNX Runtime's TensorRT / CUDA execution provider against torch (when the
# installed onnxruntime has one: onnxruntime-gpu), and a catalogue-scale evaluation (20,000 x
# 20,000 tracks of 56 windows; DVI-Test-sized estimates scale it by (tracks / 20,000)^2).
#
#     bash benchmarks/gpu_check.sh [.venv/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no GPU visible to torch"
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
echo "== GPU tests"
"$PY" -m pytest -q tests/test_precision.py tests/test_retrieval.py
echo "== precision (embedding throughput, training step)"
"$PY" -m benchmarks.bench_precision --device cuda --files 8 --seconds 240 --steps 10
echo "== backends (the exported model on ONNX Runtime's GPU execution providers vs torch)"
if "$PY" -c 'import onnxruntime as o, sys
p = o.get_available_providers(); print(p); sys.exit(0 if "CUDAExecutionProvider" in p else 1)'
then
    "$PY" -m benchmarks.bench_backends --device cuda --files 8 --seconds 240
else
    echo "this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu==1.32.0)"
fi
echo "== evaluation at catalogue scale"
"$PY" -m benchmarks.bench_eval --device cuda --queries 20000 --candidates 20000 --skip-plain
