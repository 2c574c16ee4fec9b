#!/usr/bin/env python
"""The GPU checks the notebooks mark `#| cuda`, plus the measurements the issues ask of a GPU, as one script.

  parity    : the same DSD scores on CUDA as on the CPU (tiny random pipeline, fp32 and fp16; the shipped scene-sd)
  trace     : `DSDScorer.trace` on an SD-2.1-shaped pipeline (UNet, VAE and text encoder of SD 2.1's sizes, random
              weights) at 512 px on the GPU: host memory kept (RSS before/after, the trace's own bytes), GPU peak
  fused     : the fused log-sum-exp (issue 20, item 3) on the SD-2.1-shaped UNet at 512 px, fp16 / bf16 / fp32:
              which SDPA backend stock SDPA picks, whether the capture took the fused kernel (or fell back, and why),
              UNet output of AttentionCapture(fused=True) and (fused=False) vs the stock processors (bit-equal?),
              LSE fused vs explicit (max abs diff), UNet-call times (8 rows, all 16 cross-attention layers); then
              DSDScorer.score (fp16; bench_score's 1 image x 10 captions x 10 timesteps) with fused=True vs
              fused=False: time and score difference (estimated at about a minute on an H200; not yet run there)
  ratios    : issue 20's ratios at native resolutions in fp16, side by side in one run: SD-2.1-base sizes at 512 px and
              SDXL-base sizes at 1024 px (random weights, made on the GPU), bench_score's workload (1 image x 10
              captions x 10 timesteps): (a) DSDScorer.score, (a') the same with fused=False, (b) the naive per-pair loop
              with the reference's cost structure (3 captions timed, scaled to 10), (c) the bare UNet rows;
              (b)/(a), (a)/(c), (a')/(c) and score agreement
  evaluator : block throughput of the evaluator (`evaluate_benchmark`, in memory) on scene-world examples (i2t 1 x C
              and t2i C x 1 blocks) at both sizes: examples and UNet rows per second, at 8 and 32 examples per call
  train     : one prompt-learning step (LoRA rank 4 on all attention layers, 2 i2t examples x 6 captions) on the
              SD-2.1-shaped UNet at 512 px on the GPU, bf16 autocast through accelerate, with and without gradient
              checkpointing: time per step and peak GPU memory

Each part records its numbers (or its error) in one JSON file; a failing part does not stop the others.

    HF_HUB_OFFLINE=1 python bench/gpu_check.py --out gpu_check.json
"""
from __future__ import annotations
import argparse, json, os, time, traceback


DEV = "cuda"

def sync():
    import torch
    if DEV == "cuda": torch.cuda.synchronize()

def reset_peak():
    import torch
    if DEV == "cuda": torch.cuda.reset_peak_memory_stats()

def peak_gib():
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 30 if DEV == "cuda" else None

def rss_gib():
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 30


def parity(res):
    import torch
    from dsd_nb.models import tiny_pipeline, load_pipeline
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.scenes import scene_example, render
    scene, cap, negs = scene_example("test", 3)
    caps = [cap.text()] + [c.text() for _, c in negs]
    img = render(scene)
    cpu = DSDScorer(tiny_pipeline(seed=0), seed=0).score(img, caps)
    gpu = DSDScorer(tiny_pipeline(seed=0).to(DEV), seed=0).score(img, caps).cpu()
    half = DSDScorer(tiny_pipeline(seed=0).to(DEV, torch.float16), seed=0).score(img, caps).cpu()
    res["tiny_fp32_max_abs_diff"] = float((gpu - cpu).abs().max())
    res["tiny_fp16_finite"] = bool(torch.isfinite(half).all())
    res["tiny_fp16_max_abs_diff"] = float((half - cpu).abs().max())
    s_cpu = DSDScorer(load_pipeline("scene-sd", device="cpu"), steps=10, seed=0).score(img, caps)
    s32 = DSDScorer(load_pipeline("scene-sd", device=DEV, dtype="fp32"), steps=10, seed=0).score(img, caps).cpu()
    s16 = DSDScorer(load_pipeline("scene-sd", device=DEV), steps=10, seed=0).score(img, caps).cpu()  # default on CUDA: fp16
    res["scene_sd_cpu"] = s_cpu[0].tolist()
    res["scene_sd_fp32_max_abs_diff"] = float((s32 - s_cpu).abs().max())
    res["scene_sd_fp16_max_abs_diff"] = float((s16 - s_cpu).abs().max())
    res["scene_sd_same_ranking_fp32"] = bool((s32.argsort() == s_cpu.argsort()).all())
    res["scene_sd_same_ranking_fp16"] = bool((s16.argsort() == s_cpu.argsort()).all())
    res["pass_eps_1e-3"] = dict(tiny_fp32=res["tiny_fp32_max_abs_diff"] < 1e-3, scene_sd_fp32=res["scene_sd_fp32_max_abs_diff"] < 1e-3,
                                scene_sd_fp16=res["scene_sd_fp16_max_abs_diff"] < 1e-3)


def trace(res, resolution=512, steps=10):
    resolution = RES
    import torch
    from dsd_nb.models import sd21_shaped_pipeline
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.tracing import trace_nbytes
    from dsd_nb.scenes import scene_example, render
    scene, cap, negs = scene_example("test", 3)
    caps = [cap.text()] + [c.text() for _, c in negs]
    t0 = time.time()
    pipe = sd21_shaped_pipeline(seed=0, resolution=resolution, dtype=torch.float16, full=True).to(DEV)
    res["build_s"] = time.time() - t0
    sc = DSDScorer(pipe, steps=steps, seed=0, layers="all_cross")
    hw = tuple(sc.latent_shape[1:])
    res.update(resolution=resolution, captions=len(caps), timesteps=steps, layers=len(sc.layers), latent=list(hw))
    n_keep = max(len(pipe.tokenizer(c).input_ids) for c in caps)
    res["native_trace_mib"] = trace_nbytes(sc.layers, hw, len(caps), steps, n_keep, False, None) / 2 ** 20
    res["native_per_head_trace_mib"] = trace_nbytes(sc.layers, hw, len(caps), steps, n_keep, True, None) / 2 ** 20
    img = render(scene, resolution)
    sc.score(img, caps[:1])  # warm-up (kernels, allocator)
    sync(); reset_peak()
    before = rss_gib(); t0 = time.time()
    with sc.trace() as tr: sc.score(img, caps)  # defaults: head mean, maps pooled to at most 32 x 32, fp32, max_bytes 1 GiB
    sync()
    res.update(trace_s=time.time() - t0, rss_before_gib=before, rss_after_gib=rss_gib(), trace_mib=tr.nbytes / 2 ** 20,
               gpu_peak_gib=peak_gib(), unet_calls=tr.unet_calls,
               grids=sorted({tuple(v.shape[-2:]) for v in tr.probs.values()}), scores=tr.scores.tolist())
    reset_peak(); t0 = time.time()
    s = sc.score(img, caps); sync()
    res.update(score_s=time.time() - t0, score_gpu_peak_gib=peak_gib(),
               same_scores_as_trace=float((s[0].float().cpu() - tr.scores.float().cpu()).abs().max()))


def _bench():
    "bench/bench_score.py, for its workload and its methods (a), (b), (c)."
    import sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_score
    return bench_score

def _timed(fn, repeats, warm=None):
    "Median seconds of `fn` over `repeats` runs after one warm-up run (`warm`, default `fn`), and its last result."
    (warm or fn)(); sync()
    ts, out = [], None
    for _ in range(repeats):
        t1 = time.perf_counter(); out = fn(); sync(); ts.append(time.perf_counter() - t1)
    return sorted(ts)[len(ts) // 2], out

def _sized(name, px):
    "fp16 pipelines of the measured sizes with random weights made on the device; tiny ones for --device cpu."
    import torch
    from dsd_nb.models import sd21_shaped_pipeline, tiny_pipeline, tiny_sdxl_pipeline
    B = _bench()
    with torch.device(DEV):
        if name == "sd21": pipe = sd21_shaped_pipeline(seed=0, resolution=px, full=True)
        elif name == "sdxl": pipe = B.sdxl_sized_pipeline(px, device=DEV)
        elif name == "tiny": pipe = tiny_pipeline(seed=0, resolution=px)
        else: pipe = tiny_sdxl_pipeline(seed=0, resolution=px)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(DEV, torch.float16 if DEV == "cuda" else torch.float32)

def _sizes(): return [("sd21", 512), ("sdxl", 1024)] if DEV == "cuda" else [("tiny", 64), ("tinyxl", 64)]

def _free():
    import gc, torch
    gc.collect()
    if DEV == "cuda": torch.cuda.empty_cache()

def ratios(res, steps=10, nb=3):
    import torch
    B = _bench()
    img, caps = B.make_image(0), B.CAPTIONS
    for name, px in _sizes():
        r = res[name] = dict(resolution=px)
        try:
            t0 = time.time(); pipe = _sized(name, px); sync(); r["build_s"] = time.time() - t0
            r["unet_params_M"] = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
            reset_peak()
            ta, sa = _timed(lambda: B.run_a(pipe, img, caps, steps, 32), 3)
            tf, sf = _timed(lambda: B.run_a(pipe, img, caps, steps, 32, fused=False), 3)
            r["a_gpu_peak_gib"] = peak_gib()
            tb, sb = _timed(lambda: B.run_b(pipe, img, caps[:nb], steps), 1, warm=lambda: B.run_b(pipe, img, caps[:1], 1))
            prepared = B.prep_c(pipe, img, caps, steps, 32)
            tc, _ = _timed(lambda: B.run_c(pipe, prepared, 32), 3)
            tb *= len(caps) / nb
            sa, sf, sb = sa.float().cpu(), sf.float().cpu(), sb.float().cpu()
            r.update(dtype=str(pipe.unet.dtype), unet_rows=steps * (len(caps) + 1), a_s=ta, f_s=tf, b_s_scaled=tb, c_s=tc,
                     b_over_a=tb / ta, a_over_c=ta / tc, f_over_c=tf / tc, a_vs_f_max_abs_diff=float((sa - sf).abs().max()),
                     a_vs_b_max_abs_diff=float((sa[:nb] - sb).abs().max()), scores_finite=bool(torch.isfinite(sa).all()))
        except Exception: r["error"] = traceback.format_exc()[-2000:]
        finally:
            pipe = prepared = None; _free()

def evaluator(res, steps=10):
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.evaluate import scene_ranking_examples
    from dsd_nb.benchmarks import evaluate_benchmark, unet_rows
    for name, px in _sizes():
        r = res[name] = dict(resolution=px)
        try:
            pipe = _sized(name, px)
            n = 32 if name != "sdxl" else 16
            ex = scene_ranking_examples("test", n // 2, direction="both", size=px)  # i2t and t2i blocks of each scene
            sc = DSDScorer(pipe, steps=steps, seed=0)
            evaluate_benchmark(sc, ex[:2], progress=False); sync()  # warm-up
            rows = unet_rows(ex, len(sc.timesteps))
            r.update(examples=len(ex), blocks=sorted({f"{len(e.images)}x{len(e.captions)}" for e in ex}), unet_rows=rows)
            for batch in (8, 32):
                reset_peak(); t1 = time.perf_counter()
                evaluate_benchmark(sc, ex, batch=batch, progress=False); sync()
                dt = time.perf_counter() - t1
                r[f"batch{batch}"] = dict(s=dt, examples_per_s=len(ex) / dt, rows_per_s=rows / dt, gpu_peak_gib=peak_gib())
        except Exception: r["error"] = traceback.format_exc()[-2000:]
        finally:
            pipe = sc = None; _free()


def fused(res, steps=10, repeats=5):
    import statistics, torch
    from dsd_nb import attention
    from dsd_nb.attention import AttentionCapture, select_layers
    from dsd_nb.models import sd21_shaped_pipeline, tiny_pipeline
    from dsd_nb.scoring import DSDScorer
    t0 = time.time()
    # the SD-2.1-shaped UNet on the GPU; --device cpu: the tiny pipeline, a smoke test of this part
    pipe = (sd21_shaped_pipeline(seed=0, resolution=RES) if DEV == "cuda" else tiny_pipeline(seed=0, resolution=RES)).to(DEV)
    res.update(build_s=time.time() - t0, resolution=RES)
    unet = pipe.unet
    layers = select_layers(unet, "all_cross")
    real, n = attention.fused_attention, dict(asked=0, fused=0)
    def spy(*a, **k):
        got = real(*a, **k); n["asked"] += 1; n["fused"] += got is not None
        return got
    attention.fused_attention = spy
    g = torch.Generator().manual_seed(0)
    hw = unet.config.sample_size
    x = torch.randn(8, 4, hw, hw, generator=g); t = torch.randint(0, 1000, (8,), generator=g)
    ctx = torch.randn(8, 77, unet.config.cross_attention_dim, generator=g)
    def timed(fn):
        fn(); sync(); ts = []
        for _ in range(repeats):
            t1 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t1)
        return statistics.median(ts)
    try:
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
            r = res[name] = {}
            try:
                unet.to(dt); reset_peak()
                xd, td, cd = x.to(DEV, dt), t.to(DEV), ctx.to(DEV, dt)
                run = lambda: unet(xd, td, encoder_hidden_states=cd).sample
                with torch.no_grad():
                    d = layers[-1].head_dim  # the backend stock SDPA picks at the largest query grid
                    q = torch.zeros(8, layers[-1].heads, hw * hw, d, device=DEV, dtype=dt); kk = torch.zeros(8, layers[-1].heads, 77, d, device=DEV, dtype=dt)
                    r["sdpa_backend"] = int(torch._fused_sdp_choice(q, kk, kk, None, 0.0, False))
                    del q, kk
                    stock = run()
                    n.update(asked=0, fused=0)
                    with AttentionCapture(unet, "all_cross") as cf: out_f = run()
                    r["fused_calls"], r["layers"] = n["fused"], len(layers)
                    with AttentionCapture(unet, "all_cross", fused=False) as ce: out_e = run()
                    r["fused_out_equals_stock"], r["explicit_out_equals_stock"] = bool(torch.equal(out_f, stock)), bool(torch.equal(out_e, stock))
                    r["fused_out_max_abs_diff"] = float((out_f.float() - stock.float()).abs().max())
                    r["lse_max_abs_diff"] = max(float((cf.lse[k] - ce.lse[k]).abs().max()) for k in ce.lse)
                    r["lse_max_rel_diff"] = max(float(((cf.lse[k] - ce.lse[k]).abs() / ce.lse[k].abs().clamp(min=1)).max()) for k in ce.lse)
                    def cap_run(f):
                        with AttentionCapture(unet, "all_cross", fused=f): run()
                    r["unet_s"] = dict(stock=timed(run), fused=timed(lambda: cap_run(True)), explicit=timed(lambda: cap_run(False)))
                    r["unet_gpu_peak_gib"] = peak_gib()
            except Exception: r["error"] = traceback.format_exc()[-2000:]
        res["fused_failed"] = {str(k): v for k, v in attention._FUSED_FAILED.items()}
        res["fused_checked"] = sorted(str(k) for k in attention._FUSED_CHECKED)
    finally:
        attention.fused_attention = real
    # scoring: the scorer's default (fused) vs fused=False, fp16 (load_pipeline's CUDA default)
    unet.to(torch.float16 if DEV == "cuda" else torch.float32); pipe.to(unet.dtype)
    import sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_score import CAPTIONS, make_image
    caps, img = CAPTIONS, make_image(0)  # bench_score's workload: 1 image x 10 captions
    out = {}
    for tag, f in (("fused", True), ("explicit", False)):
        sc = DSDScorer(pipe, fused=f, steps=steps, seed=0)
        sc.score(img, caps[:1]); sync()  # warm-up
        ts = []
        for _ in range(3):
            t1 = time.perf_counter(); s = sc.score(img, caps); sync(); ts.append(time.perf_counter() - t1)
        out[tag] = (statistics.median(ts), s.float().cpu())
    res["score"] = dict(dtype=str(unet.dtype), captions=len(caps), timesteps=steps, fused_s=out["fused"][0], explicit_s=out["explicit"][0],
                        explicit_over_fused=out["explicit"][0] / out["fused"][0],
                        max_abs_diff=float((out["fused"][1] - out["explicit"][1]).abs().max()),
                        same_ranking=bool((out["fused"][1].argsort() == out["explicit"][1].argsort()).all()))
    del pipe, unet
    import gc; gc.collect()
    if DEV == "cuda": torch.cuda.empty_cache()  # the parts after this one measure their own GPU peaks


def train(res, resolution=512, steps=3):
    resolution = RES
    import torch
    from accelerate import Accelerator
    from dsd_nb.models import sd21_shaped_pipeline
    from dsd_nb.trainables import add_lora, lora_parameters
    from dsd_nb.evaluate import scene_ranking_examples
    from dsd_nb.scoring import DSDScorer
    import sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train import timed_steps
    ex = scene_ranking_examples("fewshot", 2, direction="i2t", size=resolution)
    pipe = sd21_shaped_pipeline(seed=0, resolution=resolution).to(DEV)
    n_params = add_lora(pipe, "bench")
    params = lora_parameters(pipe.unet, "bench")
    rows = []
    for ckpt in (False, True):
        if ckpt: pipe.unet.enable_gradient_checkpointing()
        acc = Accelerator(mixed_precision="bf16", cpu=DEV == "cpu")
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        scorer = DSDScorer(pipe, seed=0, chunk_size=64)
        unet, opt = acc.prepare(pipe.unet, opt)
        unet.train()
        sync(); reset_peak()
        times, losses = timed_steps(pipe, scorer, unet, ex, acc, opt, params, steps, sync)
        rows.append(dict(checkpointing=ckpt, s_per_step=sorted(times)[len(times) // 2], gpu_peak_gib=peak_gib(),
                         losses=losses))
    res.update(resolution=resolution, lora_params=n_params, rows_per_step=sum(e.n_candidates + 1 for e in ex), precision="bf16", rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="parity,fused,ratios,evaluator,trace,train")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    ap.add_argument("--resolution", type=int, default=512)
    a = ap.parse_args()
    global DEV, RES
    DEV, RES = a.device, a.resolution
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch, diffusers, transformers, peft, accelerate
    report = dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__, peft=peft.__version__,
                  accelerate=accelerate.__version__, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f: json.dump(report, f, indent=1)
        os.replace(tmp, a.out)
    for part in a.parts.split(","):
        r = report[part] = {}
        t0 = time.time()
        try: globals()[part](r)
        except Exception: r["error"] = traceback.format_exc()[-3000:]
        r["wall_s"] = time.time() - t0
        print(part, json.dumps(r)[:2000], flush=True)
        save()


if __name__ == "__main__":
    main()
