#!/bin/bash
# One device session: the #| cuda checks and GPU measurements (bench/gpu_check.py). Results land in $OUT (default: bench/out).
# The device machine has torch but not diffusers/fastcore: wheels in .whl/ are installed to /tmp/site first.
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/machine.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.is_available())" | tee -a "$OUT/machine.txt"
T0=$(date +%s); LIMIT=${LIMIT:-520}
OMP_NUM_THREADS=6 timeout $((LIMIT - 10)) python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v "kept in float32" | tee "$OUT/gpu_check.log"
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/machine.txt"
echo "done after $(( $(date +%s) - T0 )) s"
