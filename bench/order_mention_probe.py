"""Order probe O (bench/RESULTS.md), a diagnostic: can this UNet learn to put the first-mentioned object left (or on top) at all?
Captions always name the left (upper) object first ("left of" / "above" only), so binding needs no direction word:
mention order alone says where each object goes. From scene-sd, UNet only (text encoder frozen), epsilon MSE, all
timesteps, batch 64, lr 3e-4, EMA 0.995. Evaluated on t2i order of validation scenes, split by the true caption's
relation: "left of"/"above" (what O was trained on) and "right of"/"below" (never seen by O).

    HF_HUB_OFFLINE=1 python bench/order_mention_probe.py train runs/order-mention 35   # minutes; then evaluates
    HF_HUB_OFFLINE=1 python bench/order_mention_probe.py eval scene-sd                 # any model: the same evaluation
"""
import copy, random, sys, time, torch, torch.nn.functional as F
from pathlib import Path
from diffusers import DDPMScheduler
from dsd_nb.models import load_pipeline, save_pipeline
from dsd_nb.scene_sd import latent_pool
from dsd_nb.scenes import Caption, Phrase, relation
from dsd_nb.scoring import encode_captions, DSDScorer
from dsd_nb.prompt_learning import scene_ranking_examples
torch.set_num_threads(1)
if len(sys.argv) < 3 or sys.argv[1] not in ("train", "eval"): sys.exit(__doc__)
mode, out = sys.argv[1], Path(sys.argv[2])

def evaluate(pipe, n=200):
    ex = scene_ranking_examples("val", n, seed=0, direction="t2i", kinds=("order",))
    for bank in (0, 1):
        sc, acc = DSDScorer(pipe, steps=10, seed=bank), {"seen (left of, above)": [], "unseen (right of, below)": []}
        for e in ex:
            s = sc.score(e.images, e.captions[0])[:, 0]
            seen = any(w in e.captions[0] for w in (" left of ", " above ", " over "))
            acc["seen (left of, above)" if seen else "unseen (right of, below)"].append(float(s[0] > s[1]))
        print(f"bank {bank}:", {k: f"{sum(v) / len(v):.3f} of {len(v)}" for k, v in acc.items()}, flush=True)

if mode == "eval": evaluate(load_pipeline(sys.argv[2], device="cpu")); sys.exit()
minutes = float(sys.argv[3])
pipe = load_pipeline("scene-sd", device="cpu")
unet, te, tok, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
sched = DDPMScheduler.from_config(pipe.scheduler.config)
pool = latent_pool(vae, 8000, seed=11, p_single=0.0, progress=False)
def caption(scene, rng):
    a, b = scene.objects
    if relation(a, b) in ("right of", "below"): a, b = b, a  # the left (upper) object is named first
    ph = lambda o: Phrase(o.colour, o.shape, o.size if rng.random() < 0.5 else None)
    return Caption(ph(a), relation(a, b), ph(b), template=rng.randrange(3)).text()
te.requires_grad_(False).eval(); unet.requires_grad_(True).train()
opt = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=1e-2)
ema = copy.deepcopy(unet).requires_grad_(False)
sf, n, step, t0, last, losses = vae.config.scaling_factor, len(pool["scenes"]), 0, time.time(), time.time(), []
while time.time() - t0 < minutes * 60:
    rng = random.Random(f"O-{step}"); idx = [rng.randrange(n) for _ in range(64)]
    caps = ["" if rng.random() < 0.1 else caption(pool["scenes"][i], rng) for i in idx]
    g = torch.Generator().manual_seed(step); z0 = pool["mean"][idx] * sf
    noise = torch.randn(z0.shape, generator=g); t = torch.randint(0, 1000, (64,), generator=g)
    loss = F.mse_loss(unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=encode_captions(tok, te, caps)).sample, noise)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0); opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), unet.parameters()): pe.mul_(0.995).add_(p.detach(), alpha=0.005)
    losses.append(loss.item()); step += 1
    if step % 100 == 0: print("O", step, f"{time.time() - t0:.0f} s", round(sum(losses[-100:]) / 100, 5), flush=True)
pipe.unet = ema.eval(); save_pipeline(pipe, out / f"step{step}", overwrite=True); print("O saved", out / f"step{step}", flush=True)
evaluate(pipe)
