#!/usr/bin/env python
"""Can a few shots teach the default model word order? The probes behind `13_few_shot_experiment`'s finding.

`timesteps`: the unchanged model's accuracy on text-to-image order and relation negatives of 100 validation
scenes, per timestep of the 10-step DSD grid and per score term (the total, the attention log-sum-exp term,
the denoising gain, the conditional error alone), with two noise (epsilon) banks, and the total by the caption's
axis (left/right, above/below).

`generate`: does the unchanged model place the objects of a two-object caption where the caption says? One image per
true caption of `--n` validation scenes (30 DDIM steps, guidance 2.0 and 4.0, seeded); the scene detector finds the
two named objects (colour and shape); of the images where it finds both, the share whose objects are on the
named axis (horizontal for left/right, vertical for above/below) and the share in the named relation (axis and
direction: which object is on which side).

`pretrain`: continue the model's own denoising training (epsilon MSE on UNet and text encoder, lr `--lr`, batch
`--batch`, timesteps `--t0`..999, 10% empty captions, EMA 0.995) on 8000 fresh two-object pretraining scenes for
`--minutes`, saving the EMA pipeline under `--out` every 10 minutes; `timesteps --model <folder>` then measures it.
`--absolute P` draws the pool with 30% single objects instead, and captions an off-centre single object (centre
more than 0.1 from the middle) "a red circle on the left" (or right) with probability P: a meaning for the
direction words that needs no binding. `--split_words` first moves the token embeddings of "right", "below" and
"under" away from those of "left", "above" and "over" (a random step as long as the one between "red" and "blue");
`--freeze_text` then trains the UNet only, so the text encoder cannot merge them again; `--scratch` starts from a
freshly initialised UNet and text encoder instead of `--model`'s (keeping its VAE and tokenizer).

`ground`: the recipe's own UNet training (`dsd_nb.scene_sd.train_denoiser`, resumable; batch `--batch`, lr `--lr`, all
timesteps, EMA 0.995) on the same 8000 pretraining scenes (30% single objects), with `--ground W` times the recipe's
grounding loss (each colour, shape and size word's attention mass inside its object's mask) added to the epsilon MSE
at every timestep, so that where the noise hides the image, a word's attention can only land on its object if the
model knows from the caption where that object goes. With `--split_words --freeze_text` as in `pretrain`. Saves the
EMA pipeline under `--out` every 10 minutes.

`words`: does the model read a caption's direction? For 60 validation scenes, the mean squared change of the text
embedding and of the noise prediction (timesteps 589, 789, 989, the true image noised) when the caption's subject
and object are swapped, its relation word is replaced by the opposite one (left <-> right, above <-> below), by one
on the other axis (left of -> above), or the object's colour is changed; each relative to the axis change. Then,
for 40 single objects well off centre, "a red circle on the left" against "... on the right" (relative to a colour
change, and which has the lower error). Plus the cosine between the token embeddings of opposite relation words.

`learn`: train a LoRA (all attention layers, or `--layers cross`; rank 4, AdamW, grad clip 1.0) on 128 shots (`--shots`) with our own short loop,
and every `--eval` steps report the accuracy per kind on 48 of the shots themselves and on the 100 validation
scenes (order and relation, t2i), each on the 10-step grid with fixed noise banks (100 and 101, not the shots'
training draws). `--kinds order --direction t2i` trains on order negatives only; `--t0 500` draws training
timesteps from 500..999 only (where layout is decided); `--mirror` adds each shot mirrored left-right with
"left" and "right" swapped in its captions (256 examples from 128 scenes); `--full` fine-tunes every UNet weight
instead of a LoRA; `--text_lora` adds a LoRA on the text encoder's attention and MLP projections, trained with the
UNet's (captions re-encoded with grad each step).

    HF_HUB_OFFLINE=1 python bench/order_probe.py timesteps
    HF_HUB_OFFLINE=1 python bench/order_probe.py generate
    HF_HUB_OFFLINE=1 python bench/order_probe.py words --model scene-sd
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --minutes 24 --t0 300 --lr 1e-4 --batch 64 --out runs/order-pretrain --tag H
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --minutes 40 --t0 500 --lr 3e-4 --batch 64 --out runs/order-pretrain-I --tag I
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --minutes 35 --t0 300 --lr 3e-4 --batch 64 --absolute 0.5 --out runs/order-pretrain-K --tag K
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --minutes 32 --t0 300 --lr 3e-4 --batch 64 --absolute 0.5 --split_words --freeze_text --out runs/order-pretrain-L --tag L
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --model runs/order-pretrain-L/step<N> --minutes 40 --t0 300 --lr 3e-4 --batch 64 --absolute 0.5 --freeze_text --out runs/order-pretrain-L2 --tag L2
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --model runs/order-pretrain-L2/step<N> --minutes 30 --t0 300 --lr 3e-4 --batch 64 --absolute 0.5 --out runs/order-pretrain-L3 --tag L3
    HF_HUB_OFFLINE=1 python bench/order_probe.py ground --split_words --freeze_text --ground 0.3 --batch 32 --lr 3e-4 --minutes 45 --out runs/order-ground-N --tag N
    HF_HUB_OFFLINE=1 python bench/order_probe.py timesteps --model runs/order-pretrain/step<N>  # N: the last step saved
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --steps 300 --tag A
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --steps 300 --t0 500 --tag B
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --steps 300 --mirror --tag C
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --steps 240 --batch 8 --eval 60 --mirror --direction both \\
        --kinds subject,object,relation,attribute_swap,order --tag D
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --shots 2048 --steps 600 --eval 150 --tag E
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --shots 2048 --steps 600 --eval 150 --full --lr 1e-4 --tag F
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --steps 300 --text_lora --tag J
    HF_HUB_OFFLINE=1 python bench/order_probe.py learn --model runs/order-pretrain-L/step<N> --steps 300 --tag LA
    HF_HUB_OFFLINE=1 python bench/order_probe.py pretrain --scratch --freeze_text --absolute 0.5 --t0 0 --lr 3e-4 --batch 64 --minutes 80 --out runs/order-pretrain-M --tag M

Every probe takes `--device` (default cpu; the random draws stay on the CPU, so a run on `cuda` draws the same);
`bench/gpu_order.sh` runs a from-scratch `pretrain` and the binding probes in one device session.

Results: bench/RESULTS.md, "Can few shots teach word order?".
"""
from __future__ import annotations
import argparse, re, time


def token_row(tok, word:str)->int:
    "The row of a one-token world word in the text encoder's token embedding table."
    return tok(word, add_special_tokens=False).input_ids[0]


def timesteps(pipe, n:int):
    import torch
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.prompt_learning import scene_ranking_examples
    ex = scene_ranking_examples("val", n, seed=0, direction="t2i", kinds=("order", "relation"))
    terms = {"total": lambda r: r.per_timestep[:, 0], "attention": lambda r: r.attention[:, 0].mean(-1),
             "gain": lambda r: r.error_uncond - r.error[:, 0], "-error": lambda r: -r.error[:, 0]}
    for bank in (0, 1):
        sc = DSDScorer(pipe, steps=10, seed=bank)
        res = [(sc.score(e.images, e.captions[0], details=True), e.kinds) for e in ex]
        for kind in ("order", "relation"):
            pairs = [(r, j + 1) for r, kinds in res for j, k in enumerate(kinds) if k == kind]
            print(f"bank {bank}, t2i {kind} ({len(pairs)} scenes), timesteps {sc.timesteps.tolist()}")
            for name, f in terms.items():
                per_t = torch.stack([(f(r)[0] > f(r)[j]).float() for r, j in pairs]).mean(0)
                mean = sum(float(f(r)[0].mean() > f(r)[j].mean()) for r, j in pairs) / len(pairs)
                print(f"  {name:9s} over the grid {mean:.3f}; per timestep", [round(x, 2) for x in per_t.tolist()], flush=True)
            horizontal = lambda r: bool(re.search(r"\b(left|right)\b", r.captions[0]))
            by_axis = {ax: [float(r.scores[0, 0] > r.scores[j, 0]) for r, j in pairs if horizontal(r) == (ax == "left/right")] for ax in ("left/right", "above/below")}
            print("  total over the grid, by the caption's axis:", {ax: f"{sum(v) / max(len(v), 1):.3f} of {len(v)}" for ax, v in by_axis.items()}, flush=True)


def generate(pipe, n:int):
    import torch
    from dsd_nb.scenes import sample_examples, detect, relation, Obj
    ex = [(s, c) for s, c in sample_examples("val", n, seed=0, p_single=0.0)]
    caps = [c.text() for _, c in ex]
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    axis = lambda r: "x" if r in ("left of", "right of") else "y"
    for gs in (2.0, 4.0):
        images = []
        for i in range(0, len(caps), 20):
            g = torch.Generator("cpu").manual_seed(i)
            images += pipe(caps[i:i + 20], num_inference_steps=30, guidance_scale=gs, generator=g, height=side, width=side, output_type="pil").images
        both = on_axis = named = 0
        per = {r: [0, 0] for r in ("left of", "right of", "above", "below")}  # relation -> [on the axis, also in the named direction]
        for (_, c), im in zip(ex, images):
            dets = detect(im)
            find = lambda ph: next((d for d in dets if d.colour == ph.colour and d.shape == ph.shape), None)
            a, b = find(c.subject), find(c.object)
            if a is None or b is None: continue
            r = relation(Obj(a.shape, a.colour, a.size, a.x, a.y), Obj(b.shape, b.colour, b.size, b.x, b.y))
            both += 1; on_axis += axis(r) == axis(c.relation); named += r == c.relation
            if axis(r) == axis(c.relation): per[c.relation][0] += 1; per[c.relation][1] += r == c.relation
        print(f"guidance {gs}: both objects found in {both}/{len(caps)}; of those, on the named axis {on_axis / max(both, 1):.3f}, "
              f"in the named relation {named / max(both, 1):.3f} (chance: 0.5 and 0.25); on the axis, in the named direction, by relation: "
              + ", ".join(f"{r} {k}/{n}" for r, (n, k) in per.items()), flush=True)


def words(pipe, n:int):
    "How much the text embedding and the noise prediction move when one part of a true two-object caption changes."
    import dataclasses, numpy as np, torch
    from dsd_nb.scenes import sample_examples, render, Caption, COLOURS
    unet, te, tok, vae, sched = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae, pipe.scheduler
    dev = unet.device  # draws on the CPU (the same on every device), moved there
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    other_axis = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}
    from dsd_nb.scoring import encode_captions
    enc = lambda cs: encode_captions(tok, te, cs)
    kinds = ("swap", "flip", "axis", "colour")
    eps_d, text_d, flip_by_axis = {k: [] for k in kinds}, {k: [] for k in kinds}, {"left/right": [], "above/below": []}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for scene, c in list(sample_examples("val", n, seed=0, p_single=0.0))[:n]:
            x = torch.from_numpy(np.array(render(scene, vae.config.sample_size))).permute(2, 0, 1)[None].float() / 127.5 - 1
            z0 = vae.encode(x.to(dev)).latent_dist.mean * vae.config.scaling_factor
            colour = next(k for k in COLOURS if k not in (c.subject.colour, c.object.colour))
            caps = [c, Caption(c.object, c.relation, c.subject, c.template),       # subject and object swapped
                    dataclasses.replace(c, relation=opposite[c.relation]),          # left <-> right, above <-> below
                    dataclasses.replace(c, relation=other_axis[c.relation]),        # left of -> above, ...
                    dataclasses.replace(c, object=dataclasses.replace(c.object, colour=colour))]  # the object's colour
            e = enc([k.text() for k in caps])
            for k, v in zip(kinds, ((e[1:] - e[:1]) ** 2).mean((1, 2)).tolist()): text_d[k].append(v)
            for t in (589, 789, 989):
                tt = torch.tensor([t], device=dev)
                x_t = sched.add_noise(z0, torch.randn(z0.shape, generator=g).to(dev), tt)
                eps = unet(x_t.repeat(len(caps), 1, 1, 1), tt.repeat(len(caps)), encoder_hidden_states=e).sample
                d = ((eps[1:] - eps[:1]) ** 2).mean((1, 2, 3))
                for k, v in zip(kinds, d.tolist()): eps_d[k].append(v)
                flip_by_axis["left/right" if c.relation in ("left of", "right of") else "above/below"].append(d[1].item() / d[2].item())
    mean = lambda v: sum(v) / len(v)
    for name, dd in (("text embedding", text_d), ("noise prediction (t 589, 789, 989)", eps_d)):
        print(f"{name}: mean squared change relative to an axis change", {k: round(mean(v) / mean(dd["axis"]), 4) for k, v in dd.items()})
    print("noise prediction, flip relative to axis change, per axis", {k: round(mean(v), 4) if v else "no scene" for k, v in flip_by_axis.items()})
    # single objects well off centre: "a red circle on the left" against "... on the right" (and a colour change)
    singles = [(sc, c) for sc, c in sample_examples("val", 200, seed=0, p_single=1.0) if abs(sc.objects[0].x - 0.5) > 0.15][:40]
    g, flip, colour_d, true_side = torch.Generator().manual_seed(0), [], [], 0
    with torch.no_grad():
        for scene, c in singles:
            ph, side = c.subject.text(), "left" if scene.objects[0].x < 0.5 else "right"
            other_colour = "green" if c.subject.colour != "green" else "red"
            caps = [f"a {ph} on the {side}", f"a {ph} on the {'right' if side == 'left' else 'left'}", f"a {ph.replace(c.subject.colour, other_colour)} on the {side}"]
            x = torch.from_numpy(np.array(render(scene, vae.config.sample_size))).permute(2, 0, 1)[None].float() / 127.5 - 1
            z0, e = vae.encode(x.to(dev)).latent_dist.mean * vae.config.scaling_factor, enc(caps)
            for t in (589, 789, 989):
                tt, noise = torch.tensor([t], device=dev), torch.randn(z0.shape, generator=g).to(dev)
                eps = unet(sched.add_noise(z0, noise, tt).repeat(3, 1, 1, 1), tt.repeat(3), encoder_hidden_states=e).sample
                err = ((eps - noise) ** 2).mean((1, 2, 3)); true_side += int(err[0] < err[1])
                d = ((eps[1:] - eps[:1]) ** 2).mean((1, 2, 3)); flip.append(d[0].item()); colour_d.append(d[1].item())
    print(f"single objects 'on the left/right': flip relative to a colour change {sum(flip) / sum(colour_d):.4f}; "
          f"the true side has the lower error in {true_side} of {3 * len(singles)}")
    W = te.get_input_embeddings().weight
    vec = lambda w: W[token_row(tok, w)]
    cos = lambda a, b: round(torch.nn.functional.cosine_similarity(vec(a), vec(b), dim=0).item(), 3)
    print("token embedding cosine", {f"{a}/{b}": cos(a, b) for a, b in (("left", "right"), ("above", "below"), ("over", "under"), ("red", "blue"), ("circle", "square"))})


def learn(pipe, a):
    import torch, PIL.ImageOps
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.attention import AttentionCapture
    from dsd_nb.prompt_learning import (RankingExample, scene_ranking_examples, few_shot, add_lora, lora_parameters, ranking_scores,
                                        ranking_loss, example_generator, batch_indices, evaluate_ranking)
    pool = scene_ranking_examples("fewshot", max(512, 2 * a.shots), seed=0, direction=a.direction, kinds=tuple(a.kinds.split(",")))
    train = few_shot(pool, a.shots, a.seed)
    if a.mirror:
        swap = lambda c: re.sub(r"\b(left|right)\b", lambda m: "right" if m[1] == "left" else "left", c)
        train = train + [RankingExample([PIL.ImageOps.mirror(im) for im in e.images], [swap(c) for c in e.captions], e.kinds) for e in train]
    val = scene_ranking_examples("val", 100, seed=0, direction="t2i", kinds=("order", "relation"))
    if a.full:  # every UNet weight trains, no adapter
        pipe.unet.requires_grad_(True); params = [p for p in pipe.unet.parameters()]
    else:
        add_lora(pipe, "default", a.rank, None, a.layers, seed=a.seed)
        params = lora_parameters(pipe.unet)
    if a.text_lora:  # a LoRA on the text encoder too (attention and MLP), trained with the UNet's: captions re-encoded each step, with grad
        import dsd_nb.prompt_learning as pl
        from peft import LoraConfig, inject_adapter_in_model
        torch.manual_seed(a.seed)  # the LoRA's gaussian init
        inject_adapter_in_model(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]), pipe.text_encoder)
        for n, p in pipe.text_encoder.named_parameters(): p.requires_grad_("lora_" in n)
        params = params + [p for p in pipe.text_encoder.parameters() if p.requires_grad]
        flag = torch.nn.Parameter(torch.zeros(1))  # ranking_scores encodes captions with grad when the soft prompt trains
        pl.soft_prompt = lambda p, _pipe=pipe: flag if p is _pipe and torch.is_grad_enabled() else None
    print(a.tag, "trainable parameters", sum(p.numel() for p in params), flush=True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-2)
    sc = DSDScorer(pipe, seed=a.seed, chunk_size=64)
    banks = [DSDScorer(pipe, seed=s, steps=10, chunk_size=64) for s in (100, 101)]
    cache = {}
    acc = lambda v: {k[4:]: round(x, 3) for k, x in v.items() if k.startswith("acc_")}
    def report(step):
        pipe.unet.eval()
        print(a.tag, step, "shots", acc(evaluate_ranking(banks[0], train[:48], grid=True)),
              "val", [acc(evaluate_ranking(b, val, grid=True)) for b in banks], flush=True)
    report(0)
    t0 = time.time()
    for step in range(a.steps):
        pipe.unet.train()
        ex = [train[i] for i in batch_indices(len(train), a.batch, step, a.seed)]
        with AttentionCapture(pipe.unet, sc.layers) as cap:
            s = ranking_scores(sc, ex, [example_generator(a.seed, step, j) for j in range(len(ex))], a.draws, cap, t_range=(a.t0, 999), cache=cache)
            loss = ranking_loss(s, a.loss).mean()
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        if step % 20 == 0: print(a.tag, step, "loss", round(loss.item(), 4), f"{time.time() - t0:.0f} s", flush=True)
        if (step + 1) % a.eval == 0: report(step + 1)


def split_direction_words(te, tok, seed:int):
    "Give each opposite word its own embedding again: 'right', 'below', 'under' move away from 'left', 'above', 'over'."
    import torch
    W, g = te.get_input_embeddings().weight, torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scale = (W[token_row(tok, "red")] - W[token_row(tok, "blue")]).norm()  # a step as large as the one between two colours
        for w in ("right", "below", "under"):
            r = torch.randn(W.shape[1], generator=g).to(W.device)  # drawn on the CPU: the same step on every device
            W[token_row(tok, w)] += r / r.norm() * scale


def ground(pipe, a):
    "The recipe's own UNet training (`scene_sd.train_denoiser`: epsilon MSE + `--ground` x its grounding loss, all timesteps), resumable, saving the EMA pipeline every 10 minutes."
    import time
    from pathlib import Path
    from diffusers import DDPMScheduler
    from dsd_nb.models import save_pipeline
    from dsd_nb.scene_sd import latent_pool, train_denoiser, assemble_pipeline
    if a.split_words: split_direction_words(pipe.text_encoder, pipe.tokenizer, a.seed)
    comps = dict(unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, vae=pipe.vae,
                 scheduler=DDPMScheduler.from_config(pipe.scheduler.config))  # the training noise schedule of the recipe (same betas)
    pool = latent_pool(pipe.vae, 8000, seed=11, p_single=0.3, progress=False)  # fresh pretraining-split scenes, 30% single objects
    t0, out = time.time(), Path(a.out)
    while (left := a.minutes - (time.time() - t0) / 60) > 0.5:  # chunks of at most 10 minutes, each resuming from the last checkpoint
        done, log, ema = train_denoiser(comps, pool, out / "ckpt", steps=10**6, batch_size=a.batch, lr=a.lr, ema_decay=0.995, seed=a.seed,
                                        max_minutes=min(10, left), progress=False, ground_weight=a.ground, train_text_encoder=not a.freeze_text)
        print(a.tag, done, f"{time.time() - t0:.0f} s", "loss", [round(x[1], 4) for x in log[-4:]], flush=True)
        save_pipeline(assemble_pipeline(comps, unet=ema), out / f"step{done}", overwrite=True); print(a.tag, "saved", out / f"step{done}", flush=True)


def pretrain(pipe, a):
    "Continue the model's own denoising training (epsilon MSE, UNet + text encoder) on fresh two-object scenes (with --absolute, 30% single objects)."
    import copy, random, torch, torch.nn.functional as F
    from diffusers import DDPMScheduler
    from dsd_nb.models import save_pipeline
    from dsd_nb.scene_sd import latent_pool
    from dsd_nb.scenes import describe
    from dsd_nb.scoring import encode_captions
    unet, te, tok, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
    sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the training noise schedule of the recipe (same betas)
    pool = latent_pool(vae, 8000, seed=11, p_single=0.3 if a.absolute else 0.0, progress=False)  # fresh pretraining-split scenes
    def caption(scene, rng):  # with --absolute, a single object left or right of centre is, with that probability, "on the left/right"
        c = describe(scene, rng, with_size=0.5)
        x = scene.objects[0].x
        if len(scene.objects) == 1 and abs(x - 0.5) > 0.1 and rng.random() < a.absolute:
            return f"a {c.subject.text()} on the {'left' if x < 0.5 else 'right'}".replace("a a", "an a").replace("a o", "an o")
        return c.text()
    sf, n = vae.config.scaling_factor, len(pool["scenes"])
    if a.scratch:  # a fresh UNet and text encoder (the recipe's architecture, seed --seed); the VAE and tokenizer stay
        from dsd_nb.scene_sd import scene_sd_components
        fresh = scene_sd_components(seed=a.seed)
        pipe.unet, pipe.text_encoder = unet, te = fresh["unet"].to(vae.device), fresh["text_encoder"].to(vae.device)
    if a.split_words: split_direction_words(te, tok, a.seed)
    unet.requires_grad_(True); unet.train()
    te.requires_grad_(not a.freeze_text); te.train(not a.freeze_text)
    params = list(unet.parameters()) + ([] if a.freeze_text else list(te.parameters()))
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-2)
    ema = copy.deepcopy(unet).requires_grad_(False)
    step, losses, t0 = 0, [], time.time()
    last = t0
    while time.time() - t0 < a.minutes * 60:
        rng = random.Random(f"bind-{step}")
        idx = [rng.randrange(n) for _ in range(a.batch)]
        caps = ["" if rng.random() < 0.1 else caption(pool["scenes"][i], rng) for i in idx]
        g = torch.Generator().manual_seed(step)
        z0 = pool["mean"][idx] * sf
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(a.t0, 1000, (a.batch,), generator=g)
        z0, noise, t = z0.to(vae.device), noise.to(vae.device), t.to(vae.device)  # drawn on the CPU: the same draws on every device
        loss = F.mse_loss(unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=encode_captions(tok, te, caps, grad=not a.freeze_text)).sample, noise)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()): pe.mul_(0.995).add_(p.detach(), alpha=0.005)
        losses.append(loss.item()); step += 1
        if step % 50 == 0: print(a.tag, step, f"{time.time() - t0:.0f} s", "loss", round(sum(losses[-50:]) / 50, 5), flush=True)
        if time.time() - last > 600 or time.time() - t0 >= a.minutes * 60:  # the EMA weights, every 10 minutes and at the end
            last = time.time(); pipe.unet = ema.eval(); te.eval()
            save_pipeline(pipe, f"{a.out}/step{step}", overwrite=True)  # (save_pretrained copies from any device)
            pipe.unet = unet; te.train(not a.freeze_text); print(a.tag, "saved", f"{a.out}/step{step}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=("timesteps", "generate", "words", "learn", "pretrain", "ground"))
    ap.add_argument("--model", default="scene-sd"); ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--kinds", default="order"); ap.add_argument("--direction", default="t2i")
    ap.add_argument("--steps", type=int, default=300, help="learn: training steps (the other probes use the 10-step DSD grid)")
    ap.add_argument("--batch", type=int, default=16, help="learn and pretrain: examples per step")
    ap.add_argument("--draws", type=int, default=2); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="ce"); ap.add_argument("--t0", type=int, default=0)
    ap.add_argument("--mirror", action="store_true"); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=100); ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shots", type=int, default=128); ap.add_argument("--layers", default="all", choices=("all", "cross"))
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="fine-tune every UNet weight instead of a LoRA")
    ap.add_argument("--text_lora", action="store_true", help="also a LoRA on the text encoder (attention and MLP), trained jointly")
    ap.add_argument("--absolute", type=float, default=0.0, help="pretrain: share of off-centre single objects captioned 'on the left/right'")
    ap.add_argument("--scratch", action="store_true", help="pretrain: start from a freshly initialised UNet and text encoder (keeps the VAE)")
    ap.add_argument("--split_words", action="store_true", help="pretrain: first move 'right', 'below', 'under' away from their opposites' token embeddings")
    ap.add_argument("--freeze_text", action="store_true", help="pretrain: train the UNet only (the text encoder stays as it is)")
    ap.add_argument("--minutes", type=float, default=24); ap.add_argument("--out", default="runs/order-pretrain")
    ap.add_argument("--ground", type=float, default=0.3, help="ground: weight of the grounding loss (the recipe's stage 3 uses 0.05)")
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, auto, ... (random draws stay on the CPU)")
    a = ap.parse_args()
    for k in ("n", "steps", "batch", "shots", "eval"):
        if getattr(a, k) < 1: ap.error(f"--{k} must be 1 or more, got {getattr(a, k)}")
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from dsd_nb.core import DSDInputError
    from dsd_nb.models import load_pipeline
    try: pipe = load_pipeline(a.model, device=a.device, dtype="fp32")
    except DSDInputError as e: ap.error(str(e))
    if a.probe == "timesteps": timesteps(pipe, a.n)
    elif a.probe == "generate": generate(pipe, a.n)
    elif a.probe == "words": words(pipe, min(a.n, 60))
    elif a.probe == "pretrain": pretrain(pipe, a)
    elif a.probe == "ground": ground(pipe, a)
    else: learn(pipe, a)


if __name__ == "__main__":
    main()
