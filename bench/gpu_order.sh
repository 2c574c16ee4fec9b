#!/bin/bash
# One device session: can this UNet learn word order when the direction words cannot merge? (bench/order_probe.py;
# bench/RESULTS.md, "Can few shots teach word order?"). A fresh UNet under a frozen, freshly initialised text encoder
# (token cosine left/right 0.11) trains on the GPU for $MINUTES from timestep 0 up, then the probes that read
# binding run on it: generate (is the named object on the named side?), words, timesteps. Results land in $OUT.
# The device machine has torch but not diffusers/fastcore/peft: carry their wheels in .whl/ (the device tool's notes
# say how to download them), e.g. run(command="bash bench/gpu_order.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || { echo "installing the wheels in .whl/ failed"; exit 1; }
fi
python3 -c "import diffusers, transformers, peft, fastcore, dsd_nb.models" || { echo "dsd_nb's needs are missing: carry their wheels in .whl/"; exit 1; }
rm -rf /tmp/order-N  # a warm machine may hold an earlier run's steps
MIN=${MINUTES:-5}; BATCH=${BATCH:-256}; LR=${LR:-3e-4}; T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/machine.txt"
P="python3 bench/order_probe.py --device ${DEVICE:-cuda} --threads 4"
$P pretrain --model scene-sd --scratch --freeze_text --absolute 0.5 --t0 0 --lr $LR --batch $BATCH --minutes $MIN \
   --out /tmp/order-N --tag N > "$OUT/pretrain.log" 2>&1 || { tail -n 20 "$OUT/pretrain.log"; exit 1; }
tail -n 3 "$OUT/pretrain.log"
M=$(ls -d /tmp/order-N/step* 2>/dev/null | sort -V | tail -n 1)
[ -n "$M" ] || { echo "pretrain saved no model: see $OUT/pretrain.log"; exit 1; }
echo "model $M after $(( $(date +%s) - T0 )) s"
rc=0
$P generate --model "$M" --n ${GEN_N:-200} 2>&1 | tee "$OUT/generate.log" || rc=1
$P words --model "$M" 2>&1 | tee "$OUT/words.log" || rc=1
$P timesteps --model "$M" --n ${VAL_N:-100} 2>&1 | tee "$OUT/timesteps.log" || rc=1
echo "done after $(( $(date +%s) - T0 )) s"; exit $rc
