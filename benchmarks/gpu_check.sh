#!/usr/bin/env bash
# The GPU figures of issue 3 in one go (about 5 minutes on one H100): fitness paths for WRN-16-2 at sparsity 0.8 with
# a population of 20, then the paper preset's network (WRN-16-8) at 0.8. Compare `achieved_tflops` of the best
# population path with the GPU's bf16 dense peak (H100 SXM: 989 TFLOP/s; H100 PCIe: 756; H200: 989).
# Usage, from the repository root on a GPU machine: bash benchmarks/gpu_check.sh [--data PATH]
set -euo pipefail
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
python -m pip install -q -e . >/dev/null 2>&1 || true
evo-sparse bench --device cuda --preset cpu --sparsities 0.8 --pop 20 --repeats 3 \
    --train-images 4096 --val-images 5000 "$@"
evo-sparse bench --device cuda --preset paper --sparsities 0.8 --pop 20 --repeats 2 \
    --train-images 16384 --val-images 5000 "$@"
