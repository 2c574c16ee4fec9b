#!/usr/bin/env python
"""Stage-3 grounding settings, each measured on what the default model is for (an experiment, not a benchmark).

Starts from the shipped `scene-sd-stage2` (the recipe's stage-2 model), runs stage 3 of the recipe (`train_denoiser` with
`ground_weight > 0`, `07_scene_sd`) with one setting, and measures the result the way the model card does:

  grounding  : `grounding_check` on 50 test scenes (share of each object word's attention inside its object)
  generation : `generation_check` on 40 val captions at guidance 2 and 4 (the scene detector judges)
  matching   : `scene_matching` on 60 test scenes, DSD scores on the 10-step grid, accuracy per direction and kind

`--steps 0` measures the shipped model itself (the baseline). One JSON file per setting (written atomically).

    HF_HUB_OFFLINE=1 python bench/grounding_sweep.py --name w0.05-s1000 --weight 0.05 --steps 1000 --out runs/sweep
    HF_HUB_OFFLINE=1 python bench/grounding_sweep.py --name base --steps 0 --out runs/sweep --device cuda
"""
from __future__ import annotations
import argparse, json, os, tempfile, time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--weight", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frozen_text_encoder", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max_minutes", type=float, default=None, help="stop training after this long (steps done are recorded)")
    ap.add_argument("--n_match", type=int, default=60)
    ap.add_argument("--n_gen", type=int, default=40)
    ap.add_argument("--n_ground", type=int, default=50)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from dsd_nb.models import load_pipeline
    from dsd_nb.core import noise_scheduler
    from dsd_nb.scene_sd import latent_pool, train_denoiser, assemble_pipeline
    from dsd_nb.model_card import grounding_check, generation_check
    from dsd_nb.evaluate import scene_matching, accuracy_table
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipe = load_pipeline("scene-sd-stage2", device=a.device, dtype="fp32")
    res = dict(name=a.name, steps=a.steps, weight=a.weight, lr=a.lr, batch=a.batch, text_encoder=not a.frozen_text_encoder,
               device=a.device, torch=torch.__version__)
    if a.steps:
        comps = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                     scheduler=noise_scheduler(pipe.scheduler))
        pool = latent_pool(pipe.vae, 20000, 0, progress=False)   # the recipe's pool (seed 0)
        ckpt = Path(tempfile.mkdtemp(prefix=f"ground-{a.name}-"))
        done, log, ema = train_denoiser(comps, pool, ckpt, a.steps, a.batch, lr=a.lr, seed=1, progress=False,
                                        ground_weight=a.weight, train_text_encoder=not a.frozen_text_encoder,
                                        max_minutes=a.max_minutes, desc="grounding")
        pipe = assemble_pipeline(comps, unet=ema).to(a.device)
        res.update(steps_done=done, train_minutes=(time.time() - t0) / 60, log=log)
    t1 = time.time()
    g = grounding_check(pipe, n=a.n_ground, split="test", steps=10)
    res["grounding"] = dict(words=len(g), on_object=float(g.on_object.mean()), share_own=float(g.share_own.mean()),
                            share_other=float(g.share_other.mean()))
    res["generation_val"] = {str(gs): float(generation_check(pipe, n=a.n_gen, split="val", guidance=gs).found.mean()) for gs in (2.0, 4.0)}
    acc = accuracy_table(scene_matching(pipe, "test", n=a.n_match, steps=10, progress=False))
    res["matching_test"] = {f"{r.direction} {r.kind} {r.mode}": float(r.accuracy) for r in acc.itertuples()}
    res["eval_minutes"] = (time.time() - t1) / 60
    tmp = out / f".{a.name}.json.tmp"
    tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, out / f"{a.name}.json")
    print(json.dumps({k: v for k, v in res.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()
