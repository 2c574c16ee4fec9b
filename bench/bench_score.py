#!/usr/bin/env python
"""Benchmark dsd_nb scoring against a naive per-pair loop with the reference's cost structure and the bare UNet floor.

One image x 10 captions x S=10 timesteps (mode "dsd", reference layers), on the same model and inputs:

  (a) dsd_nb  : DSDScorer(pipe, steps=10, seed=0).score(image, captions)
                (VAE encode once, captions encoded once, 10 x (1 empty + 10 captions) = 110 UNet rows, chunked;
                output and log-sum-exp of each hooked layer from one fused SDPA kernel, the default)
  (a') f      : the same with DSDScorer(..., fused=False): the LSE from explicit fp32 logits, Q K^T a second time
  (b) naive   : the reference's cost structure (method notes 2.6, 2.12): for each caption separately, for each
                timestep: VAE-encode the image again, encode "" and the caption, one UNet call on a 2-row batch
                (empty, caption) with EAGER attention (diffusers `AttnProcessor`, probabilities materialised) in
                every attention layer, plus the LSE from explicit logits on the 6 reference cross-attention layers;
                then the same score formula as (a).
  (c) floor   : the 110 UNet rows alone, stock SDPA processors, no capture, batched like (a) (same chunk size).

Each (model, dtype, method) runs in a fresh subprocess of this script (so the ru_maxrss high-water mark belongs to
that measurement alone); the parent collects one JSON line per child, checks that (a) and (b) agree, prints a
markdown table and can write or append it to bench/RESULTS.md. Method letters for --methods: a, f (= a'), b, c, d.

    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python bench/bench_score.py --autogroup-nice -20 --write bench/RESULTS.md   # full run (~18 min on 2 cores before (a') was added, which adds about one (a))
    HF_HUB_OFFLINE=1 python bench/bench_score.py --variants tiny:fp32               # quick (~1 min)
    HF_HUB_OFFLINE=1 python bench/bench_score.py --child --model sd21 --dtype bf16 --method a   # one measurement
"""
from __future__ import annotations
import argparse, datetime, hashlib, json, os, platform, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "@@RESULT "

CAPTIONS = ["a photo of a red cat", "a small dog on the left", "a blue car next to a house",
            "a woman with a yellow bird", "a large green tree above a house", "an orange circle and a purple square",
            "a man in a black car", "a white star below a pink triangle", "a brown dog with a gray cat",
            "a picture of a big red house"]

DEFAULT_VARIANTS = "tiny:fp32,sd21:fp32,sd21:bf16"


# ----------------------------------------------------------------------------------------------- helpers (child)
def rss_now_kb()->int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): return int(line.split()[1])
    return -1

def maxrss_kb()->int: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

def hwm_kb()->int:
    "VmHWM, the RSS high-water mark (resettable with `reset_hwm`)."
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"): return int(line.split()[1])
    return -1

def reset_hwm()->bool:
    "Reset the RSS high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs); False if not possible."
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False

def cpu_busy(interval:float=1.0)->float:
    "Fraction of all CPUs busy (any process) over `interval` seconds, from /proc/stat."
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait
    t0, i0 = snap(); time.sleep(interval); t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)

def runq_wait_s()->float:
    "Seconds all threads of this process spent runnable but waiting for a CPU (from /proc/self/task/*/schedstat)."
    tot = 0
    for d in Path("/proc/self/task").iterdir():
        try: tot += int(open(d / "schedstat").read().split()[1])
        except (OSError, IndexError, ValueError): pass
    return tot / 1e9

def loadavg()->float:
    try: return float(open("/proc/loadavg").read().split()[0])
    except OSError: return float("nan")

def make_image(seed:int=0, size=(300, 220)):
    "A deterministic synthetic RGB image (smooth gradients + blocks + noise), not at model resolution so it gets resized."
    import numpy as np, PIL.Image
    rng = np.random.default_rng(seed)
    W, H = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([xx / W, yy / H, 0.5 + 0.5 * np.sin(xx / 17 + yy / 23)], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, W - 40), rng.integers(0, H - 40)
        img[y0:y0 + rng.integers(20, 60), x0:x0 + rng.integers(20, 60)] = rng.random(3)
    img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    return PIL.Image.fromarray((img * 255).round().astype(np.uint8), "RGB")

def sdxl_sized_pipeline(resolution:int=1024, device:str="cpu"):
    """SDXL-base-1.0's sizes with random weights: its UNet (2.57 B), VAE (SD's 83.7 M layout), CLIP ViT-L text encoder and
    the OpenCLIP bigG one with its projection; weights made directly on `device` (fp32; cast after)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from dsd_nb import models
    small = models.tiny_sdxl_pipeline(seed=0, resolution=resolution)          # tokenizers and scheduler
    tok = small.tokenizer
    def cfg(d, layers, heads, act): return CLIPTextConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=4 * d,
                                                       num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
                                                       max_position_embeddings=tok.model_max_length, projection_dim=d,
                                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKL(**dict(models.SD21_VAE_CONFIG, scaling_factor=0.13025), sample_size=resolution)
        te, te2 = CLIPTextModel(cfg(768, 12, 12, "quick_gelu")), CLIPTextModelWithProjection(cfg(1280, 32, 20, "gelu"))
        unet = UNet2DConditionModel(**models.SDXL_UNET_CONFIG, sample_size=resolution // 8)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=small.tokenizer_2,
                                     unet=unet, scheduler=small.scheduler, force_zeros_for_empty_prompt=True)

def build_pipe(model:str, dtype:str, resolution:int|None):
    import torch
    from dsd_nb import models
    if model == "tiny": pipe = models.tiny_pipeline(seed=0, resolution=resolution or 64)
    elif model == "tinyxl": pipe = models.tiny_sdxl_pipeline(seed=0, resolution=resolution or 64)
    elif model == "sdxl": pipe = sdxl_sized_pipeline(resolution or 1024)
    elif model == "sd21": pipe = models.sd21_shaped_pipeline(seed=0, resolution=resolution or 256)
    elif model == "sd21full": pipe = models.sd21_shaped_pipeline(seed=0, resolution=resolution or 256, full=True)
    else: raise SystemExit(f"unknown model {model!r}")
    pipe.set_progress_bar_config(disable=True)
    if dtype == "bf16": pipe.to(dtype=torch.bfloat16)
    elif dtype != "fp32": raise SystemExit(f"unknown dtype {dtype!r}")
    return pipe


# ----------------------------------------------------------------------------------------------- (a) dsd_nb
def run_a(pipe, image, captions, steps, chunk, fused=True):
    "(a), or with fused=False (a'): the scorer's captures compute the LSE from explicit logits."
    from dsd_nb.scoring import DSDScorer
    kw = {} if fused else dict(fused=False)   # (a) leaves the scorer's default alone
    return DSDScorer(pipe, steps=steps, seed=0, chunk_size=chunk, **kw).score(image, captions)[0]


# ----------------------------------------------------------------------------------------------- (b) naive loop
def make_eager_processors(unet, ref_names, store):
    "Eager `AttnProcessor` everywhere; on the reference attn2 layers a subclass that also stores LSE(logits) per call."
    import torch
    from diffusers.models.attention_processor import AttnProcessor

    class EagerLSEProcessor(AttnProcessor):
        "diffusers' AttnProcessor, with the logits made explicit so their log-sum-exp over tokens can be kept."
        def __init__(self, name): super().__init__(); self.name = name
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
            residual = hidden_states
            if attn.spatial_norm is not None: hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                batch_size, channel, height, width = hidden_states.shape
                hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            if attn.group_norm is not None: hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            query = attn.to_q(hidden_states)
            if encoder_hidden_states is None: encoder_hidden_states = hidden_states
            elif attn.norm_cross: encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
            query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
            # == attn.get_attention_scores, with the logits kept (as the reference fork's get_attention_scores does)
            dtype = query.dtype
            q, k = (query.float(), key.float()) if attn.upcast_attention else (query, key)
            if attention_mask is None:
                logits = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
                                       q, k.transpose(-1, -2), beta=0, alpha=attn.scale)
            else: logits = torch.baddbmm(attention_mask, q, k.transpose(-1, -2), beta=1, alpha=attn.scale)
            store[self.name] = torch.logsumexp(logits.float(), dim=-1)            # [batch*heads, pixels]
            if attn.upcast_softmax: logits = logits.float()
            probs = logits.softmax(dim=-1).to(dtype)
            del logits
            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if input_ndim == 4: hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
            if attn.residual_connection: hidden_states = hidden_states + residual
            return hidden_states / attn.rescale_output_factor

    procs = {}
    for key in unet.attn_processors:
        name = key[:-len(".processor")]
        procs[key] = EagerLSEProcessor(name) if name in ref_names else AttnProcessor()
    return procs

def run_b(pipe, image, captions, steps, latent="mean", text="per_step", seed=0):
    """Per caption, per timestep: VAE encode, text encode, one 2-row UNet call with eager attention everywhere.
    Written independently of dsd_nb's scoring code (only `images_to_tensor` and the layer list are shared)."""
    import torch
    from dsd_nb.inputs import images_to_tensor
    from dsd_nb.attention import select_layers
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    dt, dev = unet.dtype, unet.device
    ref = [l.name for l in select_layers(unet, "reference")]
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    res = unet.config.sample_size * f
    lat_shape = (vae.config.latent_channels, res // f, res // f)
    # reference grid (method notes 2.5) and noise bank (2.4: one eps per grid index, shared by all candidates)
    T = pipe.scheduler.config.num_train_timesteps
    ts = sorted((T - 1) - i for i in range(10, T - 10, T // steps))
    g = torch.Generator("cpu").manual_seed(seed)
    bank = torch.randn((len(ts),) + lat_shape, generator=g)
    abar = pipe.scheduler.alphas_cumprod.float()
    sf = vae.config.scaling_factor
    gvae = torch.Generator("cpu").manual_seed(seed + 1)

    xl = type(pipe).__name__.startswith("StableDiffusionXL")      # SDXL: its pipeline's own prompt encoding, zeros for ""
    def enc_one(c):  # ([1, L, D], [1, P] or None)
        if not xl:
            ids = tok([c], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            return te(ids.to(dev))[0], None
        pe, _, pooled, _ = pipe.encode_prompt(c or " ", device=dev, do_classifier_free_guidance=False)
        return (pe, pooled) if c else (torch.zeros_like(pe), torch.zeros_like(pooled))
    def enc_text(c):  # the 2-row (empty, caption) conditioning and the UNet's extra keywords
        (e0, p0), (e1, p1) = enc_one(""), enc_one(c)
        if not xl: return torch.cat([e0, e1]), {}
        ids = torch.tensor([[res, res, 0, 0, res, res]] * 2, dtype=dt, device=dev)
        return torch.cat([e0, e1]), dict(added_cond_kwargs=dict(text_embeds=torch.cat([p0, p1]).to(dt), time_ids=ids))

    store, saved = {}, dict(unet.attn_processors)
    unet.set_attn_processor(make_eager_processors(unet, set(ref), store))
    scores = []
    try:
        with torch.no_grad():
            for c in captions:                                          # one reference pipeline call per candidate
                x = images_to_tensor(image, res)                           # preprocessing, once per call
                if text == "per_call": ctx, extra = enc_text(c)
                per_t = []
                for kk, t in enumerate(ts):
                    dist = vae.encode(x.to(dev, vae.dtype)).latent_dist    # re-encoded at every timestep
                    z0 = (dist.mean if latent == "mean" else dist.sample(generator=gvae)).float() * sf
                    if text == "per_step": ctx, extra = enc_text(c)   # [2, L, D]: (empty, caption)
                    eps = bank[kk][None]
                    ab = abar[t]
                    x_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps                # DDPM forward marginal (= Euler add_noise+scale)
                    store.clear()
                    pred = unet(torch.cat([x_t, x_t]).to(dt), torch.tensor([t, t], device=dev),
                                encoder_hidden_states=ctx.to(dt), **extra).sample.float()
                    err_u = (eps - pred[0:1]).flatten().norm()
                    err_c = (eps - pred[1:2]).flatten().norm()
                    # caption row's LSE, mean over heads and pixels, then over the 6 layers (dsd_nb's per-sample formula)
                    A = torch.stack([store[n].view(2, -1, store[n].shape[-1])[1].mean() for n in ref]).mean()
                    per_t.append(A + err_u - err_c)
                scores.append(torch.stack(per_t).mean())
    finally:
        unet.set_attn_processor(saved)
    return torch.stack(scores)


# ----------------------------------------------------------------------------------------------- (c) bare UNet rows
def prep_c(pipe, image, captions, steps, chunk):
    "Everything (c) needs but the UNet calls, built outside the timed section: x_t, t and contexts of the 110 rows."
    import torch
    from dsd_nb.scoring import DSDScorer
    from dsd_nb.core import add_noise
    s = DSDScorer(pipe, steps=steps, seed=0, chunk_size=chunk)
    (E, P), (E0, P0) = s.encode_text(captions), s.uncond_text()
    E = torch.cat([E, E0])                                                       # [M+1, L, D], row M = ""
    P = None if P is None else torch.cat([P, P0])                                # SDXL: [M+1, P] pooled text
    mean, _ = s.encode_images(image)
    z0 = mean * pipe.vae.config.scaling_factor                                   # [1, C, h, w]
    K, M = len(s.timesteps), len(captions)
    kidx = torch.arange(K).repeat_interleave(M + 1)
    text = torch.tensor([M] + list(range(M))).repeat(K)                          # per timestep: empty row, then captions
    t = s.timesteps[kidx]
    x_t = add_noise(s.sched, z0.expand(len(kidx), -1, -1, -1), s.noise[kidx], t).to(s.dtype)
    extra = None if P is None else (P[text].contiguous(), s.time_ids.expand(len(t), -1).contiguous())
    return x_t, t, E[text].contiguous(), extra

def run_c(pipe, rows, chunk):
    import torch
    x_t, t, ctx, extra = rows
    outs = []
    with torch.no_grad():
        for i in range(0, len(x_t), chunk):
            kw = {} if extra is None else dict(added_cond_kwargs=dict(text_embeds=extra[0][i:i + chunk], time_ids=extra[1][i:i + chunk]))
            outs.append(pipe.unet(x_t[i:i + chunk], t[i:i + chunk], encoder_hidden_states=ctx[i:i + chunk], **kw).sample)
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------- (d) component costs
def real_shaped_components(pipe, dtype):
    "Random-weight VAE and text encoder with SD-2.1-base's real shapes (AutoencoderKL 128-256-512-512; OpenCLIP-H text, 23 x 1024)."
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    from dsd_nb.models import _fork_seed
    tok = pipe.tokenizer
    with _fork_seed(0):
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, norm_num_groups=32, sample_size=768, scaling_factor=0.18215)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                          num_attention_heads=16, max_position_embeddings=tok.model_max_length, hidden_act="gelu",
                                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id, projection_dim=1024))
    return vae.to(dtype=dtype).eval(), te.to(dtype=dtype).eval()

def component_costs(pipe, image, captions, repeats):
    "Median seconds of one VAE encode (1 image) and of text-encoder calls on 1 and on len(captions) prompts, stand-in vs real-shaped."
    import torch
    from dsd_nb.inputs import images_to_tensor
    from dsd_nb.scoring import encode_captions
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    x = images_to_tensor(image, pipe.unet.config.sample_size * f).to(pipe.vae.dtype)
    rvae, rte = real_shaped_components(pipe, pipe.unet.dtype)
    def med(fn):
        fn()                                                    # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    out = dict(real_vae_params_M=sum(p.numel() for p in rvae.encoder.parameters()) / 1e6,
               real_te_params_M=sum(p.numel() for p in rte.parameters()) / 1e6,
               stand_vae_params_M=sum(p.numel() for p in pipe.vae.encoder.parameters()) / 1e6,
               stand_te_params_M=sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6)
    with torch.no_grad():
        for tag, vae, te in (("stand", pipe.vae, pipe.text_encoder), ("real", rvae, rte)):
            out[f"{tag}_vae_s"] = med(lambda: vae.encode(x).latent_dist.mean)
            out[f"{tag}_te1_s"] = med(lambda: encode_captions(pipe.tokenizer, te, [captions[0]]))
            out[f"{tag}_teM_s"] = med(lambda: encode_captions(pipe.tokenizer, te, list(captions)))
    return out


# ----------------------------------------------------------------------------------------------- child
def child(args):
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import warnings; warnings.filterwarnings("ignore")
    import diffusers.utils.logging as dlog; dlog.set_verbosity_error()
    from diffusers.models.attention_processor import AttnProcessor2_0
    import dsd_nb
    out = dict(model=args.model, dtype=args.dtype, method=args.method, threads=torch.get_num_threads(), dsd_nb_file=dsd_nb.__file__,
               chunk=args.chunk, steps=args.steps, pid=os.getpid())
    t0 = time.perf_counter()
    pipe = build_pipe(args.model, args.dtype, args.resolution)
    out["build_s"] = time.perf_counter() - t0
    out["unet_params_M"] = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values()), "expected stock SDPA processors"
    image = make_image(0)
    caps = CAPTIONS[:args.captions]
    n_caps = len(caps)
    if args.method == "b" and args.b_captions: caps = caps[:args.b_captions]      # timed subset, extrapolated below
    K = args.steps
    if args.method == "d":
        t1 = time.perf_counter()
        out.update(component_costs(pipe, image, caps, args.repeats))
        out["median_s"], out["d_wall_s"] = float("nan"), time.perf_counter() - t1
        out["maxrss_kb"] = maxrss_kb()
        print(MARK + json.dumps(out), flush=True)
        return

    if args.method in ("a", "f"):
        fused = args.method == "a"
        fn = lambda: run_a(pipe, image, caps, args.steps, args.chunk, fused)
        warm = lambda: run_a(pipe, image, caps, 1, args.chunk, fused)             # light: 1 timestep = 11 rows
        rows = K * (n_caps + 1)
    elif args.method == "b":
        fn = lambda: run_b(pipe, image, caps, args.steps, args.b_latent, args.b_text)
        warm = lambda: run_b(pipe, image, caps[:1], 1, args.b_latent, args.b_text)   # light: 1 caption x 1 timestep
        rows = K * 2 * len(caps)
    elif args.method == "c":
        t1 = time.perf_counter()
        prepared = prep_c(pipe, image, caps, args.steps, args.chunk)
        out["prep_s"] = time.perf_counter() - t1
        fn = lambda: run_c(pipe, prepared, args.chunk)
        warm = lambda: run_c(pipe, (*(x[:n_caps + 1] for x in prepared[:3]),
                                    None if prepared[3] is None else tuple(x[:n_caps + 1] for x in prepared[3])), args.chunk)
        rows = K * (n_caps + 1)
    else: raise SystemExit(f"unknown method {args.method!r}")

    t1 = time.perf_counter()
    if args.warmup == "full": fn()
    elif args.warmup == "light": warm()
    out["warmup"], out["warmup_s"] = args.warmup, time.perf_counter() - t1
    out["rss_before_kb"], out["maxrss_before_kb"] = rss_now_kb(), maxrss_kb()   # ru_maxrss so far: build + warm-up
    out["hwm_reset"] = reset_hwm()          # so that VmHWM after the timed runs is the timed section's own peak
    out["load_before"] = loadavg()
    times, cpu, waits, res = [], [], [], None
    for _ in range(args.repeats):
        w0, c0, t1 = runq_wait_s(), time.process_time(), time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t1); cpu.append(time.process_time() - c0); waits.append(runq_wait_s() - w0)
    out["load_after"] = loadavg()
    out["maxrss_kb"] = max(maxrss_kb(), out["maxrss_before_kb"])           # whole process (build, warm-up, timed)
    out["timed_peak_kb"] = hwm_kb() if out["hwm_reset"] else out["maxrss_kb"]
    out["times"], out["cpu_s"], out["runq_wait_s"] = times, cpu, waits
    out["min_s"] = min(times) * (n_caps / len(caps))
    out["contention"] = statistics.median(w / (t * out["threads"]) for w, t in zip(waits, times))  # share of thread time queued
    scale = n_caps / len(caps)                                                   # (b) on a caption subset: linear in captions
    out["extrapolated_from_captions"] = len(caps) if scale != 1 else None
    out["median_s"] = statistics.median(times) * scale
    out["captions"], out["pairs"] = n_caps, n_caps                              # 1 image x n_caps captions
    out["unet_rows"] = rows * scale
    out["pairs_per_s"] = n_caps / out["median_s"]
    out["s_per_row"] = out["median_s"] / out["unet_rows"]
    if args.method in ("a", "f", "b"): out["scores"] = [float(v) for v in res.float()]
    print(MARK + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------- parent
def machine_info()->dict:
    import torch, diffusers, transformers
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    except OSError: flags = []
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return dict(cpu=cpu, cores=os.cpu_count(), mem_gib=round(int(mem) / 2**20, 1),
                isa=" ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
                python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                transformers=transformers.__version__, date=datetime.datetime.now().isoformat(timespec="seconds"))

def run_child(args, model, dtype, method):
    big = model != "tiny"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model, "--dtype", dtype, "--method", method,
           "--steps", str(args.steps), "--chunk", str(args.chunk), "--threads", str(args.threads),
           "--captions", str(args.captions), "--b-latent", args.b_latent, "--b-text", args.b_text,
           "--repeats", str(args.repeats_big if big else args.repeats_tiny),
           "--warmup", args.warmup_big if big else args.warmup_tiny]
    if method == "d": cmd[cmd.index("--repeats") + 1] = "3"
    if method == "b" and big: cmd[cmd.index("--repeats") + 1] = str(args.repeats_b_big)
    if method == "b" and big and args.b_captions_big: cmd += ["--b-captions", str(args.b_captions_big)]
    if args.resolution: cmd += ["--resolution", str(args.resolution)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    if args.snapshot_dir: env["PYTHONPATH"] = os.pathsep.join([args.snapshot_dir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    wall = time.perf_counter() - t0
    line = next((l for l in p.stdout.splitlines() if l.startswith(MARK)), None)
    if p.returncode != 0 or line is None:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"child {model}/{dtype}/{method} failed (rc={p.returncode})")
    r = json.loads(line[len(MARK):]); r["child_wall_s"] = wall
    return r

def compare(a, b):
    "Scores of (a) and (b) on the captions both scored: max |diff|, same ranking?, smallest gap between (a)'s scores."
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    rank = lambda s: sorted(range(len(s)), key=lambda j: -s[j])
    sa = sorted(a)
    gap = min((y - x for x, y in zip(sa, sa[1:])), default=float("nan"))
    return dict(n=n, max_abs_diff=max(abs(x - y) for x, y in zip(a, b)), same_ranking=rank(a) == rank(b),
                min_gap_a=gap, top_a=rank(a)[0], top_b=rank(b)[0])

def fmt_mb(kb): return f"{kb / 1024:,.0f}"

def write_json(path, obj):
    "Write `obj` to `path` as JSON, atomically (a temporary file renamed into place), creating the folder."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp"); tmp.write_text(json.dumps(obj, indent=1)); os.replace(tmp, path)

def render(info, results, args)->str:
    L = []
    L.append(f"## dsd_nb scoring benchmark ({info['date']})\n")
    L.append(f"- Machine: {info['cpu']}, {info['cores']} cores visible ({args.threads} torch threads), {info['mem_gib']} GiB RAM, "
             f"ISA: {info['isa'] or 'n/a'}; no GPU")
    L.append(f"- Software: Python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}, "
             f"transformers {info['transformers']}")
    L.append(f"- Workload: 1 image x {args.captions} captions x S={args.steps} timesteps (mode dsd, reference layers), "
             f"chunk_size={args.chunk}; (b) VAE latent = `{args.b_latent}`, text encoded {args.b_text.replace('_', ' ')}")
    L.append(f"- Package: dsd_nb at git {args.git}, sources sha256[:12] {args.pkg_hash}"
             f"{' (frozen copy imported by every measurement)' if args.snapshot_dir else ''}")
    L.append(f"- Scheduling: autogroup `{args.autogroup}`; other processes may have run at the same time (see *contention*)")
    L.append(f"- Command: `HF_HUB_OFFLINE=1 python bench/bench_score.py {' '.join(args.argv)}`".rstrip() + "\n")
    L.append("| model | dtype | method | UNet rows | s / run (median) | repeats | pairs / s | s / UNet row | min s | contention | peak RSS, timed runs MiB | RSS before timed MiB | timed peak - before MiB | peak RSS, whole process MiB |")
    L.append("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = dict(a="(a) dsd_nb DSDScorer.score", f="(a') the same, fused=False", b="(b) naive per-pair (reference cost)",
                 c="(c) bare UNet rows (SDPA)")
    for r in results:
        if r["method"] == "d": continue
        rep = f"{len(r['times'])} ({', '.join(f'{t:.2f}' for t in r['times'])})"
        if r.get("extrapolated_from_captions"): rep += f"; timed on {r['extrapolated_from_captions']} captions, x{r['captions'] / r['extrapolated_from_captions']:g}"
        L.append(f"| {r['model']} | {r['dtype']} | {names[r['method']]} | {r['unet_rows']:.0f} | {r['median_s']:.2f} | {rep} | "
                 f"{r['pairs_per_s']:.3f} | {r['s_per_row']:.4f} | {r['min_s']:.2f} | {r['contention']:.0%} | {fmt_mb(r['timed_peak_kb'])} | {fmt_mb(r['rss_before_kb'])} | "
                 f"{fmt_mb(r['timed_peak_kb'] - r['rss_before_kb'])} | {fmt_mb(r['maxrss_kb'])} |")
    L.append("")
    L.append("*contention*: median share of this process's thread time spent runnable but waiting for a CPU "
             "(/proc/self/task/*/schedstat) during the timed runs; above ~5% the timing is inflated by other processes. "
             "*peak RSS, timed runs*: VmHWM after resetting it (/proc/self/clear_refs) just before the timed runs; "
             "*whole process*: ru_maxrss including model build (the bf16 models are built in fp32, then cast) and warm-up.\n")
    L.append("| model | dtype | (b)/(a) speed-up (target >= 4x) | (a)/(c) overhead (target <= 1.05x) | (a')/(c) overhead, fused=False | (a) vs (a') scores: max abs diff | (a) vs (b) scores: max abs diff | same ranking | smallest gap between (a) scores | contention a / a' / b / c |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|---:|---|")
    by = {}
    for r in results: by.setdefault((r["model"], r["dtype"]), {})[r["method"]] = r
    for (m, d), g in by.items():
        ba = f"{g['b']['median_s'] / g['a']['median_s']:.2f}x" if "a" in g and "b" in g else "-"
        ac = f"{g['a']['median_s'] / g['c']['median_s']:.3f}x" if "a" in g and "c" in g else "-"
        fc = f"{g['f']['median_s'] / g['c']['median_s']:.3f}x" if "f" in g and "c" in g else "-"
        af = f"{compare(g['a']['scores'], g['f']['scores'])['max_abs_diff']:.2e}" if "a" in g and "f" in g else "-"
        if "a" in g and "b" in g:
            c = compare(g["a"]["scores"], g["b"]["scores"])
            sc = (f"{c['max_abs_diff']:.2e} (on {c['n']} captions)", "yes" if c["same_ranking"] else f"NO (top: a={c['top_a']}, b={c['top_b']})",
                  f"{c['min_gap_a']:.2e}")
        else: sc = ("-", "-", "-")
        la = " / ".join(f"{g[k]['contention']:.0%}" if k in g else "-" for k in "afbc")
        L.append(f"| {m} | {d} | {ba} | {ac} | {fc} | {af} | {sc[0]} | {sc[1]} | {sc[2]} | {la} |")
    L.append("")
    proj = [(k, g) for k, g in by.items() if all(x in g for x in "abcd")]
    if proj:
        K, M = args.steps, args.captions
        L.append("**Stand-in VAE and text encoder vs SD-2.1-base-shaped ones** (random weights, same dtype; median of 3 calls, s). "
                 "Projection: swap the measured stand-in component costs for the real-shaped ones, call for call: "
                 f"(a) does 1 VAE encode + 1 text call on {M} captions + 1 on \"\"; "
                 f"(b) does {M}x{K} VAE encodes + {M}x{K}x2 one-prompt text calls"
                 f"{' (text per step)' if args.b_text == 'per_step' else ''}; (c) has none.\n")
        L.append("| model | dtype | VAE encode stand-in / real (M params) | text 1 prompt stand-in / real | "
                 f"text {M} prompts stand-in / real (M params) | projected (a) s | projected (b) s | projected (b)/(a) | projected (a)/(c) |")
        L.append("|---|---|---|---|---|---:|---:|---:|---:|")
        for (m, d), g in proj:
            c = g["d"]
            da = (c["real_vae_s"] - c["stand_vae_s"]) + (c["real_teM_s"] - c["stand_teM_s"]) + (c["real_te1_s"] - c["stand_te1_s"])
            nb = M * K
            db = nb * (c["real_vae_s"] - c["stand_vae_s"]) + (nb * 2 if args.b_text == "per_step" else M * 2) * (c["real_te1_s"] - c["stand_te1_s"])
            pa, pb = g["a"]["median_s"] + da, g["b"]["median_s"] + db
            L.append(f"| {m} | {d} | {c['stand_vae_s']:.3f} / {c['real_vae_s']:.3f} ({c['stand_vae_params_M']:.2f} / {c['real_vae_params_M']:.1f}) | "
                     f"{c['stand_te1_s']:.3f} / {c['real_te1_s']:.3f} | {c['stand_teM_s']:.3f} / {c['real_teM_s']:.3f} "
                     f"({c['stand_te_params_M']:.1f} / {c['real_te_params_M']:.1f}) | {pa:.1f} | {pb:.1f} | {pb / pa:.2f}x | "
                     f"{pa / g['c']['median_s']:.3f}x |")
        L.append("")
    return "\n".join(L)

def parent(args):
    if args.autogroup_nice is not None:
        # With kernel.sched_autogroup_enabled=1, `nice` only ranks processes inside one session's autogroup; the CPU is
        # shared fairly *between* sessions. Raising this session's autogroup priority keeps background jobs that were
        # started (niced) from other sessions from taking half the CPUs during the measurements.
        try: Path("/proc/self/autogroup").write_text(str(args.autogroup_nice))
        except OSError as e: print(f"could not set the autogroup nice: {e}", flush=True)
    args.autogroup = Path("/proc/self/autogroup").read_text().strip() if Path("/proc/self/autogroup").exists() else "n/a"
    import dsd_nb
    pkg = Path(dsd_nb.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.glob("*.py")): h.update(f.name.encode()); h.update(f.read_bytes())
    args.pkg_hash = h.hexdigest()[:12]
    try:
        root = pkg.parent
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", pkg.name], capture_output=True, text=True).stdout.strip()
        args.git = f"{head}{' + uncommitted changes in ' + pkg.name + '/' if dirty else ''}"
    except OSError: args.git = "n/a"
    args.snapshot_dir = None
    if args.snapshot:
        # the package may be edited while the bench runs: every measurement imports one frozen copy
        args.snapshot_dir = tempfile.mkdtemp(prefix="dsd_nb_bench_")
        shutil.copytree(pkg, Path(args.snapshot_dir) / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    try: _parent(args)
    finally:
        if args.snapshot_dir: shutil.rmtree(args.snapshot_dir, ignore_errors=True)

def _parent(args):
    variants = [v.split(":") for v in args.variants.split(",")]
    info = machine_info()
    results = []
    methods = args.methods.split(",")
    t0 = time.perf_counter()
    for model, dtype in variants:
        for method in methods:
            if method == "d" and model in ("tiny", "sd21full"): continue
            busy, waited = cpu_busy(), 0.0
            while busy > args.idle_busy and waited < args.idle_max_wait:
                time.sleep(5); waited += 5 + 1; busy = cpu_busy()
            print(f"[{time.perf_counter() - t0:7.1f}s] {model} {dtype} ({method}) ... (CPU busy {busy:.0%}, waited {waited:.0f}s for idle)", flush=True)
            r = run_child(args, model, dtype, method)
            r["cpu_busy_before"], r["idle_waited_s"] = busy, waited
            if args.snapshot_dir and not r["dsd_nb_file"].startswith(args.snapshot_dir):
                print(f"  warning: the measurement imported {r['dsd_nb_file']}, not the frozen copy", flush=True)
            results.append(r)
            if method == "d":
                print(f"[{time.perf_counter() - t0:7.1f}s]   " + ", ".join(f"{k}={v:.3f}" for k, v in r.items() if k.startswith(("stand_", "real_"))), flush=True)
                if args.json: write_json(args.json, dict(info=info, results=results))
                continue
            print(f"[{time.perf_counter() - t0:7.1f}s]   median {r['median_s']:.3f}s  times {[round(t, 3) for t in r['times']]}  "
                  f"build {r['build_s']:.1f}s warmup {r['warmup_s']:.1f}s  peak RSS {fmt_mb(r['maxrss_kb'])} MiB  "
                  f"load {r['load_before']:.1f}->{r['load_after']:.1f}  contention {r['contention']:.0%}  timed peak {fmt_mb(r['timed_peak_kb'])} MiB", flush=True)
            if args.json: write_json(args.json, dict(info=info, results=results))
    md = render(info, results, args)
    md += f"\nTotal bench wall time: {time.perf_counter() - t0:.0f} s.\n"
    print("\n" + md)
    if args.write or args.append:
        path = Path(args.write or args.append)
        mode = "w" if args.write else "a"
        with open(path, mode) as f: f.write(md + "\n")
        print(f"{'wrote' if mode == 'w' else 'appended to'} {path}")

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of model:dtype (models: tiny, sd21 (stand-in VAE/text encoder), sd21full (SD-2.1-sized VAE and text encoder too); dtypes: fp32, bf16)")
    ap.add_argument("--methods", default="a,f,b,c,d",
                    help="comma list of a, f (a' = a with fused=False), b, c, d (d: VAE / text-encoder cost, stand-in vs SD-2.1-shaped; big models only)")
    ap.add_argument("--steps", type=int, default=10, help="S, the reference timestep grid (10 -> 10 timesteps)")
    ap.add_argument("--captions", type=int, default=10, help=f"number of captions (at most {len(CAPTIONS)})")
    ap.add_argument("--chunk", type=int, default=32, help="UNet rows per call for (a) and (c) (DSDScorer chunk_size)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--resolution", type=int, default=None, help="image size (default: 64 for tiny, 256 for sd21)")
    ap.add_argument("--repeats-tiny", type=int, default=5)
    ap.add_argument("--repeats-big", type=int, default=2)
    ap.add_argument("--repeats-b-big", type=int, default=1, help="repeats of (b) on the big model (it is the slowest)")
    ap.add_argument("--warmup-tiny", choices=("full", "light", "none"), default="full")
    ap.add_argument("--warmup-big", choices=("full", "light", "none"), default="light",
                    help="light: one run with 1 timestep (a, c) or 1 caption x 1 timestep (b)")
    ap.add_argument("--b-captions-big", type=int, default=0,
                    help="(b) on the big model: time this many captions and extrapolate linearly (0 = all)")
    ap.add_argument("--b-latent", choices=("mean", "sample"), default="mean",
                    help="(b) latent: posterior mean (comparable with (a) to ~1e-3) or a sample as in the reference (same cost)")
    ap.add_argument("--b-text", choices=("per_step", "per_call"), default="per_step",
                    help="(b) text encoding: every timestep, or once per caption (as the reference's __call__ does)")
    ap.add_argument("--write", help="write the markdown to this file (e.g. bench/RESULTS.md)")
    ap.add_argument("--append", help="append the markdown to this file")
    ap.add_argument("--json", default=str(HERE / "out" / "score.json"), help="raw results (JSON) path ('' to skip; bench/out/ is not tracked)")
    ap.add_argument("--child-timeout", type=int, default=1800)
    ap.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                    help="import the live package in each measurement instead of a frozen copy taken at start")
    ap.add_argument("--autogroup-nice", type=int, default=None,
                    help="set this session's scheduler autogroup nice (-20..19, root) so niced jobs from other sessions yield")
    ap.add_argument("--idle-busy", type=float, default=0.15, help="before each measurement wait until the CPUs are less busy than this")
    ap.add_argument("--idle-max-wait", type=float, default=120, help="... but at most this many seconds")
    # child mode
    ap.add_argument("--child", action="store_true", help="run one measurement in this process and print one JSON line")
    ap.add_argument("--model", default="tiny"); ap.add_argument("--dtype", default="fp32"); ap.add_argument("--method", default="a")
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--warmup", choices=("full", "light", "none"), default="full")
    ap.add_argument("--b-captions", type=int, default=0)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.captions > len(CAPTIONS): ap.error(f"--captions is at most {len(CAPTIONS)}")
    child(args) if args.child else parent(args)

if __name__ == "__main__":
    main()
