#!/usr/bin/env python
"""One few-shot prompt-learning setting on the scene world, with the protocol of `13_few_shot_experiment`.

Shots from the `fewshot` split (seeded), early stopping on 50 `val` scenes scored on the 10-step DSD grid (the
unchanged model competes as step 0), evaluation with `scene_matching` on 60 test and 30 compgen scenes. Writes one
JSON file (atomically) with the validation log, the kept step and the test/compgen accuracy per direction, kind
and mode. `--k 0` evaluates the unchanged model. Used to search recipes quickly (e.g. on a GPU, several processes
side by side); the recipe is then rerun on the CPU by the experiment notebook.

    HF_HUB_OFFLINE=1 python bench/few_shot_sweep.py --name ce-lr1e-3 --k 128 --seed 0 --out runs/fs-sweep
"""
from __future__ import annotations
import argparse, json, os, time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True); ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=128); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", default="ce"); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=120); ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--draws", type=int, default=2); ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--layers", default="all"); ap.add_argument("--val_every", type=int, default=30)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--model", default="scene-sd", help="built-in model (the GPU search of 13 ran on scene-sd-stage2, then the default)")
    ap.add_argument("--no_keep_best", action="store_true")
    ap.add_argument("--device", default="cpu"); ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n_val", type=int, default=50); ap.add_argument("--n_test", type=int, default=60); ap.add_argument("--n_cg", type=int, default=30)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch, pandas as pd
    if a.threads: torch.set_num_threads(a.threads)
    from dsd_nb.models import load_pipeline
    from dsd_nb.prompt_learning import scene_ranking_examples, few_shot, train_prompt, PromptConfig
    from dsd_nb.evaluate import scene_matching, accuracy_table
    t0 = time.time()
    pipe = load_pipeline(a.model, device=a.device, dtype="fp32")
    res = dict(vars(a)); res.pop("out")
    if a.k:
        pool = scene_ranking_examples("fewshot", 512, seed=0, direction="both")
        val = scene_ranking_examples("val", a.n_val, seed=0, direction="both")
        cfg = PromptConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, loss=a.loss, margin=a.margin, n_draws=a.draws, rank=a.rank,
                           lora_layers=a.layers, seed=a.seed, val_every=a.val_every, val_steps=10, keep_best=not a.no_keep_best,
                           ckpt_every=10 ** 6)
        log = train_prompt(pipe, few_shot(pool, a.k, a.seed), val, config=cfg, progress=False)
        res.update(selected_step=log.attrs.get("selected_step"), log=json.loads(log.to_json(orient="records")),
                   train_minutes=(time.time() - t0) / 60)
    tabs = [accuracy_table(scene_matching(pipe, split, n=n, steps=10, progress=False)).assign(split=split)
            for split, n in (("test", a.n_test), ("compgen", a.n_cg))]
    acc = pd.concat(tabs)
    res["accuracy"] = {f"{r.split} {r.direction} {r.kind} {r.mode}": float(r.accuracy) for r in acc.itertuples()}
    res["minutes"] = (time.time() - t0) / 60
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{a.name}.json.tmp"; tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, out / f"{a.name}.json")
    print(json.dumps({k: v for k, v in res.items() if k != "log"})[:3000], flush=True)


if __name__ == "__main__":
    main()
