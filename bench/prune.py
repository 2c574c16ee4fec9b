"""Adaptive candidate pruning on 10-candidate tasks: UNet rows saved and the R@1 change, measured side by side in one run
(R@1 = the positive strictly above all 9 others; with KEEP < 5, R@5 is not defined under pruning).

    python bench/prune.py [--n 300] [--steps 10] [--first 2] [--keep 3]

Tasks (model: the default scene-sd), each 1 image x 10 texts, positive first:
- refcocog: the RefCOCOg layout as the reference builds it (`write_sample("refcocog")`: each ref's sentences against 9
  sentences of other refs, drawn with a seed): negatives that describe other scenes, which scene-sd mostly tells apart;
- vqa: the VQA layout (`write_sample("vqa")`): nine hard negatives per image, of every kind;
- scene10: the scene world with nine hard negatives of every kind per image (drawn with several seeds).
The last two are near chance for scene-sd (it reads colours and shapes, not relations or word order), so their R@1 says
little; refcocog is where a pruning error would show. Per task: R@1 without and with `--prune FIRST,KEEP`, the examples
whose outcome pruning changed (lost: right unpruned, wrong pruned; gained: the reverse), and a 95% bootstrap interval of
the R@1 change over examples. Prints a markdown table for bench/RESULTS.md."""
import argparse, os, platform, random, tempfile, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch, diffusers
from dsd_nb.models import load_pipeline
from dsd_nb.scoring import DSDScorer
from dsd_nb.scenes import sample_examples, negative, render, NEG_KINDS
from dsd_nb.evaluate import RankingExample
from dsd_nb.benchmark_data import load_benchmark, write_sample
from dsd_nb.benchmarks import (score_matrices, prune_matrices, example_record, outcomes, unet_rows, bootstrap, check_prune,
                               prune_timesteps)


def scene_ten(n:int, seed:int=0)->list:
    "Scene-world i2t examples with 9 distinct hard negatives each (fewer-negative scenes are skipped)."
    rng, out = random.Random(f"prune-{seed}"), []
    for j, (scene, cap) in enumerate(sample_examples("test", 4 * n, seed, p_single=0.0)):
        negs = list(dict.fromkeys(c.text() for _ in range(6) for k in NEG_KINDS if (c := negative(cap, scene, k, rng)) is not None))
        negs = [c for c in negs if c != cap.text()][:9]
        if len(negs) == 9: out.append(RankingExample([render(scene, 64)], [cap.text()] + negs, id=f"scene10/{j}", subset="scene10"))
        if len(out) == n: break
    return out


def layout(name:str, n:int)->list:
    p = write_sample(name, tempfile.mkdtemp() + f"/{name}", n=n)
    return list(load_benchmark(name, p["data"], p["images"]))


def correct(sc, exs, prune, batch=8)->np.ndarray:
    "Each example's dsd R@1 outcome (strict: a tie fails)."
    recs = []
    for i in range(0, len(exs), batch):
        part = exs[i:i + batch]
        mats = prune_matrices(sc, part, 0, *prune) if prune else score_matrices(sc, part, 0)
        recs += [example_record(e, m) for e, m in zip(part, mats)]
    df = outcomes(recs)
    return df[df["mode"] == "dsd"].correct.to_numpy(float)


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--n", type=int, default=300); ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--first", type=int, default=2); ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--tasks", default="refcocog,vqa,scene10"); a = ap.parse_args()
    sc = DSDScorer(load_pipeline(), steps=a.steps, seed=0)
    prune = check_prune((a.first, a.keep), len(sc.timesteps))
    ts = [int(sc.timesteps[k]) for k in prune_timesteps(len(sc.timesteps), a.first)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, diffusers {diffusers.__version__}; "
          f"scene-sd, steps {a.steps} (grid {sc.timesteps.tolist()}), prune {prune}: every candidate on timesteps {ts}\n")
    print("| task | examples | UNet rows, full | rows, pruned | rows saved | R@1 full | R@1 pruned | lost | gained | R@1 change [95%] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.tasks.split(","):
        exs = scene_ten(a.n) if name == "scene10" else layout(name, a.n)
        t0 = time.time()
        full, pr = correct(sc, exs, None), correct(sc, exs, prune)
        d = pr - full
        lo, hi = bootstrap(d, lambda idx: d[idx].mean())
        rf, rp = unet_rows(exs, len(sc.timesteps)), unet_rows(exs, len(sc.timesteps), prune)
        print(f"| {name} | {len(exs)} | {rf} | {rp} | {rf / rp:.2f}x | {full.mean():.3f} | {pr.mean():.3f} | {int((d < 0).sum())} | "
              f"{int((d > 0).sum())} | {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |", flush=True)
        print(f"<!-- {name}: {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__": main()
