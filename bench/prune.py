"""Adaptive candidate pruning on 10-candidate tasks: UNet rows saved and the R@1 change, measured side by side in one run
(R@1 = the positive strictly above all 9 others; with KEEP < 5, R@5 is not defined under pruning).

    python bench/prune.py [--n 40] [--steps 10] [--first 2] [--keep 3]

Tasks: the VQA layout (1 image x 10 texts, `write_sample("vqa")`: scene-world renders) and the scene world with nine
hard negatives per image (the true caption, then negatives of every kind drawn with several seeds). Model: the default
scene-sd. Prints a markdown table for bench/RESULTS.md."""
import argparse, os, platform, random, tempfile
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from dsd_nb.models import load_pipeline
from dsd_nb.scoring import DSDScorer
from dsd_nb.scenes import sample_examples, negative, render, NEG_KINDS
from dsd_nb.evaluate import RankingExample
from dsd_nb.benchmark_data import load_benchmark, write_sample
from dsd_nb.benchmarks import evaluate_benchmark, unet_rows


def scene_ten(n:int, seed:int=0)->list:
    "Scene-world i2t examples with 9 distinct hard negatives each (fewer-negative scenes are skipped)."
    rng, out = random.Random(f"prune-{seed}"), []
    for j, (scene, cap) in enumerate(sample_examples("test", 4 * n, seed, p_single=0.0)):
        negs = list(dict.fromkeys(c.text() for _ in range(6) for k in NEG_KINDS if (c := negative(cap, scene, k, rng)) is not None))
        negs = [c for c in negs if c != cap.text()][:9]
        if len(negs) == 9: out.append(RankingExample([render(scene, 64)], [cap.text()] + negs, id=f"scene10/{j}", subset="scene10"))
        if len(out) == n: break
    return out


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--n", type=int, default=40); ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--first", type=int, default=2); ap.add_argument("--keep", type=int, default=3); a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sc = DSDScorer(load_pipeline(), steps=a.steps, seed=0)
    vqa = load_benchmark("vqa", **{k: v for k, v in write_sample("vqa", tempfile.mkdtemp() + "/vqa", n=a.n).items() if k in ("data", "images")})
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; scene-sd, steps {a.steps}, prune ({a.first}, {a.keep})\n")
    print("| task | examples | UNet rows, full | rows, pruned | rows saved | R@1 full | R@1 pruned |")
    print("|---|---|---|---|---|---|---|")
    for name, exs in (("vqa", list(vqa)), ("scene10", scene_ten(a.n))):
        r = {}
        for prune in (None, (a.first, a.keep)):
            t = evaluate_benchmark(sc, exs, "ranking", prune=prune, progress=False)  # a generic name: accuracy, i.e. R@1
            r[prune is not None] = (unet_rows(exs, a.steps, prune), t[(t["mode"] == "dsd") & (t.subset == "all")].value.iloc[0])
        (rf, a1), (rp, b1) = r[False], r[True]
        print(f"| {name} | {len(exs)} | {rf} | {rp} | {rf / rp:.2f}x | {a1:.3f} | {b1:.3f} |", flush=True)


if __name__ == "__main__": main()
