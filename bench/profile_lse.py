"""Cost of dsd_nb's LSECaptureProcessor vs the stock AttnProcessor2_0 on the reference layers, one 32-row UNet chunk:
the capture as the scorer uses it (fused log-sum-exp, the default) and with fused=False (explicit Q.K^T logits), the three
measured in turn within each repeat.

    HF_HUB_OFFLINE=1 python bench/profile_lse.py --model sd21 --dtype bf16 [--repeats 2]
"""
import argparse, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import bench_score as B

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="sd21"); ap.add_argument("--dtype", default="bf16")
ap.add_argument("--repeats", type=int, default=2); ap.add_argument("--chunk", type=int, default=32)
args = ap.parse_args()
torch.set_num_threads(2)
import warnings; warnings.filterwarnings("ignore")
from dsd_nb.attention import AttentionCapture, select_layers

pipe = B.build_pipe(args.model, args.dtype, None)
x_t, t, ctx, extra = B.prep_c(pipe, B.make_image(0), B.CAPTIONS, 10, args.chunk)
x_t, t, ctx = x_t[:args.chunk], t[:args.chunk], ctx[:args.chunk]
kw = {} if extra is None else dict(added_cond_kwargs=dict(text_embeds=extra[0][:args.chunk], time_ids=extra[1][:args.chunk]))
unet = pipe.unet
ref = [l.processor_key for l in select_layers(unet, "reference")]
acc = {}

class Timed:
    "Wraps a processor and adds its wall time to acc[key]."
    def __init__(self, key, inner): self.key, self.inner = key, inner
    def __call__(self, *a, **k):
        t0 = time.perf_counter(); out = self.inner(*a, **k); acc[self.key] = acc.get(self.key, 0) + time.perf_counter() - t0
        return out

def wrap(keys):
    procs = dict(unet.attn_processors)
    for k in keys: procs[k] = Timed(k, procs[k])
    unet.set_attn_processor(procs)

def unwrap(keys):
    procs = dict(unet.attn_processors)
    for k in keys: procs[k] = procs[k].inner
    unet.set_attn_processor(procs)

def forward():
    acc.clear(); t0 = time.perf_counter()
    with torch.no_grad(): unet(x_t, t, encoder_hidden_states=ctx, **kw)
    return time.perf_counter() - t0, sum(acc.values())

res = {"stock": [], "fused": [], "explicit": []}
forward()                                                               # warm-up
for _ in range(args.repeats):
    wrap(ref); res["stock"].append(forward()); unwrap(ref)
    for name in ("fused", "explicit"):
        with AttentionCapture(unet, "reference", fused=name == "fused") as cap:
            wrap(ref); res[name].append(forward())
            unwrap(ref)                                                 # restore the capture's own processors before exit
print(f"{args.model} {args.dtype}, one UNet call on {args.chunk} rows, {len(ref)} reference layers")
for k, v in res.items():
    print(f"  {k:8s} UNet call {statistics.median(x[0] for x in v):7.3f} s   of which the 6 reference attn2 processors "
          f"{statistics.median(x[1] for x in v) * 1e3:8.1f} ms   (runs: {[(round(a, 2), round(b * 1e3, 1)) for a, b in v]})")
for name in ("fused", "explicit"):
    d = statistics.median(x[1] for x in res[name]) - statistics.median(x[1] for x in res["stock"])
    print(f"  LSE capture ({name}) extra in the processors: {d * 1e3:.1f} ms per {args.chunk}-row call "
          f"= {d / statistics.median(x[0] for x in res['stock']) * 100:.2f}% of the call")
