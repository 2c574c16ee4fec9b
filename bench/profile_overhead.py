"""Where does DSDScorer.score spend time beyond the bare UNet rows? Section timings + cProfile, tiny or sd21 model.

    HF_HUB_OFFLINE=1 python bench/profile_overhead.py --model tiny [--dtype fp32] [--repeats 5] [--cprofile]
"""
import argparse, cProfile, io, os, pstats, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import bench_score as B

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="tiny"); ap.add_argument("--dtype", default="fp32")
ap.add_argument("--repeats", type=int, default=5); ap.add_argument("--cprofile", action="store_true")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
import warnings; warnings.filterwarnings("ignore")
from dsd_nb.scoring import DSDScorer, encode_captions
from dsd_nb.attention import AttentionCapture
from dsd_nb.inputs import images_to_tensor, check_captions
from dsd_nb.models import check_pipeline

pipe = B.build_pipe(args.model, args.dtype, None)
img, caps = B.make_image(0), B.CAPTIONS
rows = B.prep_c(pipe, img, caps, 10, 32)
B.run_a(pipe, img, caps, 10, 32); B.run_c(pipe, rows, 32)      # warm-up

def med(fn, n=args.repeats):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

s = DSDScorer(pipe, steps=10, seed=0)
mean, std = s.encode_images(img)
E = s.encode_captions(caps)
z0 = s._latents(mean, std)
pairs = [(0, m) for m in range(len(caps))]
res = {}
res["(a) full score()"] = med(lambda: B.run_a(pipe, img, caps, 10, 32))
res["(c) bare UNet rows"] = med(lambda: B.run_c(pipe, rows, 32))
res["DSDScorer.__init__"] = med(lambda: DSDScorer(pipe, steps=10, seed=0))
res["  check_pipeline"] = med(lambda: check_pipeline(pipe, warn=False))
res["  len(tokenizer)"] = med(lambda: len(pipe.tokenizer))
res["encode_images (preprocess + VAE)"] = med(lambda: s.encode_images(img))
res["  images_to_tensor"] = med(lambda: images_to_tensor(img, s.size))
res["encode_captions (10)"] = med(lambda: s.encode_captions(caps))
res["  tokenizer length checks (10 calls)"] = med(lambda: [pipe.tokenizer(c, truncation=False, verbose=False) for c in caps])
res["  text encoder only (10)"] = med(lambda: pipe.text_encoder(pipe.tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids))
res["uncond embedding (fresh)"] = med(lambda: encode_captions(pipe.tokenizer, pipe.text_encoder, [""]))
res["_run (110 rows, capture)"] = med(lambda: s._run(z0, E, pairs))
def enter_exit():
    with AttentionCapture(pipe.unet, s.layers): pass
res["  AttentionCapture enter+exit"] = med(enter_exit)
w = max(len(k) for k in res)
print(f"model={args.model} dtype={args.dtype} threads={args.threads} TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}")
for k, v in res.items(): print(f"{k:<{w}}  {v * 1e3:9.2f} ms")
print(f"{'(a) - (c)':<{w}}  {(res['(a) full score()'] - res['(c) bare UNet rows']) * 1e3:9.2f} ms")
print(f"{'_run - (c)':<{w}}  {(res['_run (110 rows, capture)'] - res['(c) bare UNet rows']) * 1e3:9.2f} ms")
if args.cprofile:
    pr = cProfile.Profile(); pr.enable()
    for _ in range(3): B.run_a(pipe, img, caps, 10, 32)
    pr.disable()
    st = io.StringIO(); pstats.Stats(pr, stream=st).sort_stats("tottime").print_stats(25); print(st.getvalue())

# --- attribution of _run - (c): the LSE processors vs the per-chunk bookkeeping
def c_with_capture():
    with AttentionCapture(pipe.unet, s.layers) as cap:
        x_t, t, ctx = rows
        with torch.no_grad():
            for i in range(0, len(x_t), 32):
                cap.clear(); pipe.unet(x_t[i:i + 32], t[i:i + 32], encoder_hidden_states=ctx[i:i + 32]); cap.layer_means()
r2 = {}
r2["(c) bare UNet rows"] = med(lambda: B.run_c(pipe, rows, 32))
r2["(c) + AttentionCapture (LSE on ref layers)"] = med(c_with_capture)
r2["_run (110 rows, capture)"] = med(lambda: s._run(z0, E, pairs))
r2["(a) full score()"] = med(lambda: B.run_a(pipe, img, caps, 10, 32))
print()
for k, v in r2.items(): print(f"{k:<{w + 8}}  {v * 1e3:9.2f} ms")
if args.cprofile:
    pr = cProfile.Profile(); pr.enable()
    for _ in range(3): B.run_a(pipe, img, caps, 10, 32)
    pr.disable()
    st = io.StringIO(); ps = pstats.Stats(pr, stream=st).sort_stats("cumulative")
    ps.print_stats(r"dsd_nb|attention_processor.py.*(set_processor|set_attn_processor)|unet_2d_condition.py.*(attn_processors|set_attn)"); print(st.getvalue()[-6000:])
