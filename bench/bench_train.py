#!/usr/bin/env python
"""Benchmark one prompt-learning optimisation step (dsd_nb.prompt_learning): time per step and peak memory.

One step = a batch of 2 i2t scene-world examples (1 image x 6 captions each: the true caption and one hard
negative of each kind), one shared (timestep, noise) draw per example, DSD score with the empty-caption rows
(7 UNet rows per example, 14 per step, one chunk), hardest-negative hinge, backward into LoRA (rank 4, all
attention layers), grad clip and AdamW. Models:

  tiny   : the shipped scene-world model `scene-sd` (64 px, 16x16 latents)
  sd21   : a UNet of SD-2.1-base's exact shape (865.9 M parameters, random weights) at 256 px (32x32 latents),
           with the stand-in VAE/text encoder of `sd21_shaped_pipeline`

each with fp32 weights and mixed precision "no" or "bf16" (accelerate autocast), with and without gradient
checkpointing. Each measurement runs in a fresh subprocess (so the RSS high-water mark is its own): 1 warm-up
step, then the median of `--steps` timed steps.

    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python bench/bench_train.py --write bench/RESULTS.md        # everything (~15 min on 2 cores)
    HF_HUB_OFFLINE=1 python bench/bench_train.py --models tiny                  # quick
    HF_HUB_OFFLINE=1 python bench/bench_train.py --models sd21 --precisions no --steps 2   # fp32 only, side by side
"""
from __future__ import annotations
import argparse, datetime, json, os, platform, resource, statistics, subprocess, sys, time
from pathlib import Path

MARK = "@@RESULT "


def timed_steps(pipe, scorer, unet, ex, acc, opt, params, steps:int, sync=lambda: None, cache=None)->tuple:
    "Run 1 warm-up + `steps` optimisation steps of the prompt-learning loss; returns (seconds of each timed step, every loss)."
    import torch
    from dsd_nb.prompt_learning import ranking_scores, ranking_loss
    from dsd_nb.evaluate import example_generator
    from dsd_nb.attention import AttentionCapture
    times, losses = [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        with AttentionCapture(pipe.unet, scorer.layers) as cap:
            sc = ranking_scores(scorer, ex, [example_generator(0, step, i) for i in range(len(ex))], 1, cap, unet, cache=cache)
            loss = ranking_loss(sc).mean()
            acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad(set_to_none=True)
        sync()
        if step: times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return times, losses


def child(model:str, precision:str, checkpointing:bool, steps:int, cache:bool=True):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from dsd_nb.trainables import add_lora, lora_parameters
    from dsd_nb.evaluate import scene_ranking_examples
    from dsd_nb.scoring import DSDScorer
    from accelerate import Accelerator
    if model == "tiny":
        from dsd_nb.models import load_pipeline
        pipe, size = load_pipeline("scene-sd"), 64
    else:
        from dsd_nb.models import sd21_shaped_pipeline
        pipe, size = sd21_shaped_pipeline(seed=0, resolution=256), 256
    ex = scene_ranking_examples("fewshot", 2, direction="i2t", size=size)
    acc = Accelerator(mixed_precision=precision, cpu=True)
    n_params = add_lora(pipe, "bench")
    if checkpointing: pipe.unet.enable_gradient_checkpointing()
    params = lora_parameters(pipe.unet, "bench")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    scorer = DSDScorer(pipe, seed=0, chunk_size=64)
    unet, opt = acc.prepare(pipe.unet, opt)
    unet.train()
    times, losses = timed_steps(pipe, scorer, unet, ex, acc, opt, params, steps, cache={} if cache else None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(MARK + json.dumps(dict(model=model, precision=precision, checkpointing=checkpointing, cache=cache, lora_params=n_params,
                                 rows_per_step=sum(e.n_candidates + 1 for e in ex), step_s=statistics.median(times),
                                 steps=len(times), peak_rss_gib=round(peak, 2), loss_first=losses[0])), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,sd21")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precisions", default="no,bf16", help="comma-separated accelerate mixed-precision settings to run")
    ap.add_argument("--write", default=None, help="append the table to this markdown file")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model"); ap.add_argument("--precision"); ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--no_cache", action="store_true", help="re-encode images and captions every step (as before the latent cache)")
    ap.add_argument("--caches", default="yes", help="comma-separated: yes (the training loop's latent cache), no")
    ap.add_argument("--ckpts", default="no,yes", help="comma-separated gradient-checkpointing settings to run: no, yes")
    a = ap.parse_args()
    if a.child: return child(a.model, a.precision, a.checkpointing, a.steps, cache=not a.no_cache)
    rows = []
    for model in a.models.split(","):
        for precision in a.precisions.split(","):
            for ckpt, cache in [(k == "yes", c == "yes") for k in a.ckpts.split(",") for c in a.caches.split(",")]:
                cmd = [sys.executable, __file__, "--child", "--model", model, "--precision", precision, "--steps", str(a.steps)] + (["--checkpointing"] if ckpt else []) + ([] if cache else ["--no_cache"])
                r = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in r.stdout.splitlines() if l.startswith(MARK)]
                if not line: print(r.stderr[-2000:], file=sys.stderr); continue
                rows.append(json.loads(line[0][len(MARK):])); print(rows[-1], flush=True)
    import torch, diffusers, peft, accelerate
    head = (f"\n## Prompt-learning step ({datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__})\n\n"
            "2 i2t examples x 6 captions, 14 UNet rows per step (with the empty caption), LoRA rank 4 on all attention layers, "
            f"median of {a.steps} steps after 1 warm-up; fp32 weights, `precision` = accelerate mixed precision.\n\n"
            "| model | precision | grad. checkpointing | latent cache | LoRA params | s / step | peak RSS GiB |\n|---|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {r['model']} | {r['precision']} | {'yes' if r['checkpointing'] else 'no'} | {'yes' if r.get('cache', True) else 'no'} | {r['lora_params']:,} | "
                           f"{r['step_s']:.3f} | {r['peak_rss_gib']:.2f} |\n" for r in rows)
    print(table)
    if a.write:
        with open(a.write, "a") as f: f.write(table)


if __name__ == "__main__":
    main()
