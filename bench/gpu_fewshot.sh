#!/bin/bash
# One device session: few-shot recipes (bench/few_shot_sweep.py) side by side on one GPU, 128 shots, results in $OUT.
OUT=${OUT:-bench/out}; mkdir -p "$OUT" /tmp/fs
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
T0=$(date +%s); LIMIT=${LIMIT:-360}
run() { name=$1; shift; timeout $((LIMIT - 15)) python3 bench/few_shot_sweep.py --name $name --out /tmp/fs --device cuda --threads 1 "$@" > /tmp/fs/$name.log 2>&1 & PIDS+=($!); }
run base --k 0
for s in 0 1; do
  run ce-lr1e-3-s120-seed$s --seed $s --loss ce --lr 1e-3 --steps 120 --val_every 30
  run ce-lr3e-4-s240-seed$s --seed $s --loss ce --lr 3e-4 --steps 240 --val_every 40
  run ce-lr1e-3-s240-seed$s --seed $s --loss ce --lr 1e-3 --steps 240 --val_every 40
  run hinge-lr1e-3-s240-seed$s --seed $s --loss hinge --lr 1e-3 --steps 240 --val_every 40
  run ce-lr3e-3-s120-seed$s --seed $s --loss ce --lr 3e-3 --steps 120 --val_every 30
done
run ce-lr1e-3-r16-d4-s120-seed0 --seed 0 --loss ce --lr 1e-3 --steps 120 --val_every 30 --rank 16 --draws 4
alive() { for p in "${PIDS[@]}"; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
merge() { python3 - "$OUT/few_shot_sweep.json" <<'PY'
import json, glob, os, sys
rows = [json.load(open(f)) for f in sorted(glob.glob("/tmp/fs/*.json"))]
tmp = sys.argv[1] + ".tmp"; json.dump(rows, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[1])
PY
}
while [ $(( $(date +%s) - T0 )) -lt $((LIMIT - 5)) ] && alive; do sleep 10; merge; done
merge
for f in /tmp/fs/*.log; do echo "== $f"; tail -c 600 $f; done > "$OUT/few_shot_logs.txt"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
echo "done after $(( $(date +%s) - T0 )) s; $(ls /tmp/fs/*.json 2>/dev/null | wc -l) results"
