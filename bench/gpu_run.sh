#!/bin/bash
# One device session: the #| cuda checks and GPU measurements (bench/gpu_check.py) while stage-3 grounding settings
# run side by side on the same GPU (bench/grounding_sweep.py). Results land in $OUT (default: bench/out).
# The device machine has torch but not diffusers/fastcore: wheels in .whl/ are installed to /tmp/site first.
OUT=${OUT:-bench/out}; mkdir -p "$OUT" /tmp/sweep
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/machine.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.is_available())" | tee -a "$OUT/machine.txt"
T0=$(date +%s); LIMIT=${LIMIT:-520}
run() { name=$1; shift; timeout $((LIMIT - 20)) python3 bench/grounding_sweep.py --name $name --out /tmp/sweep --device cuda --threads 1 "$@" > /tmp/sweep/$name.log 2>&1 & PIDS+=($!); }
run base --steps 0
run w0.2-s500 --weight 0.2 --steps 500 --max_minutes 4.5
run w0.05-s1000 --weight 0.05 --steps 1000 --max_minutes 4.5
run w0.02-s1000 --weight 0.02 --steps 1000 --max_minutes 4.5
run w0.01-s2000 --weight 0.01 --steps 2000 --max_minutes 4.5
run w0.05-s2000-lr1e-4 --weight 0.05 --steps 2000 --lr 1e-4 --max_minutes 4.5
run w0.1-s1000-lr1e-4 --weight 0.1 --steps 1000 --lr 1e-4 --max_minutes 4.5
alive() { for p in "${PIDS[@]}"; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
merge() { python3 - "$OUT/sweep.json" <<'PY'
import json, glob, os, sys
rows = [json.load(open(f)) for f in sorted(glob.glob("/tmp/sweep/*.json"))]
tmp = sys.argv[1] + ".tmp"; json.dump(rows, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[1])
PY
}
( while sleep 15; do merge; done ) &
MERGER=$!
OMP_NUM_THREADS=6 timeout $((LIMIT - 40)) python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v "kept in float32" | tee "$OUT/gpu_check.log"
while [ $(( $(date +%s) - T0 )) -lt $((LIMIT - 10)) ] && alive; do sleep 5; done
kill $MERGER 2>/dev/null; merge
for f in /tmp/sweep/*.log; do echo "== $f"; tail -c 1500 $f; done > "$OUT/sweep_logs.txt"
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/machine.txt"
echo "done after $(( $(date +%s) - T0 )) s"
