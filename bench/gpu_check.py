#!/usr/bin/env python
"""The GPU checks the notebooks mark `#| cuda`, plus the measurements the issues ask of a GPU, as one script.

  parity    : the same DSD scores on CUDA as on the CPU (tiny random pipeline, fp32 and fp16; the shipped scene-sd)
  trace     : `DSDScorer.trace` on an SD-2.1-shaped pipeline (UNet, VAE and text encoder of SD 2.1's sizes, random
              weights) at 512 px on the GPU: host memory kept (RSS before/after, the trace's own bytes), GPU peak
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
    ap.add_argument("--parts", default="parity,trace,train")
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
