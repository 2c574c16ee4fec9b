"""Adaptive candidate pruning on 10-candidate tasks: UNet rows saved and the R@1 change, measured side by side in one run
(R@1 = the positive strictly above all 9 others; with KEEP < 5, R@5 is not defined under pruning).

    python bench/prune.py [--n 300] [--steps 10] [--prunes 2,3/2,5] [--tasks refcocog,scene10,vqa]

Tasks (model: the default scene-sd), each 1 image x 10 texts, positive first:
- refcocog: the RefCOCOg layout as the reference builds it (`write_sample("refcocog")`, n refs: each ref's sentences
  against 9 sentences of other refs, drawn with a seed): negatives that describe other scenes;
- scene10: the scene world with nine hard negatives per image that change a colour or a shape (the subject and object
  kinds, which scene-sd reads);
- vqa: the VQA layout (`write_sample("vqa")`): nine hard negatives of every kind, relations and word order included,
  where scene-sd is near chance, so its R@1 says little.
Each task is scored once unpruned and once per `--prunes` setting, side by side in one process. Per setting: UNet rows,
R@1, the examples whose outcome pruning changed (lost: right unpruned, wrong pruned; gained: the reverse, when the
negative that beat the positive was pruned), and a 95% bootstrap interval of the R@1 change over examples. Prints a
markdown table for bench/RESULTS.md."""
import argparse, os, platform, random, tempfile, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch, diffusers
from dsd_nb.models import load_pipeline
from dsd_nb.scoring import DSDScorer
from dsd_nb.scenes import sample_examples, negative, render
from dsd_nb.evaluate import RankingExample
from dsd_nb.benchmark_data import load_benchmark, write_sample
from dsd_nb.benchmarks import (score_matrices, prune_matrices, example_record, outcomes, unet_rows, bootstrap, check_prune,
                               prune_timesteps)


def scene_ten(n:int, seed:int=0, kinds=("subject", "object"))->list:
    "Scene-world i2t examples with 9 distinct hard negatives of `kinds` each (fewer-negative scenes are skipped)."
    rng, out = random.Random(f"prune-{seed}"), []
    for j, (scene, cap) in enumerate(sample_examples("test", 6 * n, seed, p_single=0.0)):
        negs = list(dict.fromkeys(c.text() for _ in range(12) for k in kinds if (c := negative(cap, scene, k, rng)) is not None))
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
    ap.add_argument("--prunes", default="2,3/2,5"); ap.add_argument("--tasks", default="refcocog,scene10,vqa"); a = ap.parse_args()
    sc = DSDScorer(load_pipeline(), steps=a.steps, seed=0)
    K = len(sc.timesteps)
    prunes = [check_prune(tuple(int(x) for x in p.split(",")), K) for p in a.prunes.split("/")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, diffusers {diffusers.__version__}; "
          f"scene-sd, steps {a.steps} (grid {sc.timesteps.tolist()}); the first look of FIRST = "
          + ", ".join(f"{f}: timesteps {[int(sc.timesteps[k]) for k in prune_timesteps(K, f)]}" for f in sorted({p[0] for p in prunes})) + "\n")
    print("| task | examples | R@1 unpruned | --prune | UNet rows saved | R@1 pruned | lost | gained | R@1 change [95%] |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.tasks.split(","):
        exs = scene_ten(a.n) if name == "scene10" else layout(name, a.n)
        t0 = time.time()
        full, rf = correct(sc, exs, None), unet_rows(exs, K)
        for prune in prunes:
            pr = correct(sc, exs, prune)
            d = pr - full
            lo, hi = bootstrap(d, lambda idx: d[idx].mean())
            print(f"| {name} | {len(exs)} | {full.mean():.3f} | {prune[0]},{prune[1]} | {rf / unet_rows(exs, K, prune):.2f}x | {pr.mean():.3f} | "
                  f"{int((d < 0).sum())} | {int((d > 0).sum())} | {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |", flush=True)
        print(f"<!-- {name}: {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__": main()
