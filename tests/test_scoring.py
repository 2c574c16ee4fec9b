"""scoring: per-sample scores that do not depend on batching, chunking or order; seeding; the
ScoreResult breakdown; reference parity against an independent, plainly written implementation of
the reference formula (dsd-method.md sections 2.6-2.11); v-prediction conversion; gradients."""
import itertools
import pytest
import torch
from diffusers import StableDiffusionPipeline, DDPMScheduler

from dsd_nb.core import DSDInputError, draw_noise, reference_timesteps
from dsd_nb.inputs import images_to_tensor
from dsd_nb.scoring import DSDScorer, ScoreResult, MODES

ATOL = 1e-5

CONFIGS = {
    "dsd": dict(mode="dsd"),
    "attention": dict(mode="attention"),
    "diffusion_itm": dict(mode="diffusion_itm"),
    "diffusion_itm_normalized": dict(mode="diffusion_itm", itm_normalize=True),
    "latent_sample": dict(mode="dsd", latent="sample"),
    "token_mask_real": dict(mode="dsd", token_mask="real"),
    "token_mask_words": dict(mode="attention", token_mask="words"),
}


def _close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


# ----------------------------------------------------------------------------- per-sample invariance

@pytest.mark.parametrize("name", list(CONFIGS))
def test_scores_independent_of_batch_chunk_and_order(pipe, images, captions, name):
    kw = dict(CONFIGS[name], steps=3, seed=0)
    full = DSDScorer(pipe, **kw).score(images, captions)  # 3 images x 4 captions, chunk_size 32
    assert full.shape == (3, 4) and full.dtype == torch.float32 and torch.isfinite(full).all()
    assert full.std() > 0, "scores must differ between pairs"
    for cs in (1, 3, 7, 32):
        _close(DSDScorer(pipe, chunk_size=cs, **kw).score(images, captions), full)
    sc = DSDScorer(pipe, **kw)
    for n in range(3):  # one image at a time
        _close(sc.score(images[n:n + 1], captions), full[n:n + 1])
    _close(sc.score(images[[0, 2]], captions[1:3]), full[[0, 2]][:, 1:3])  # a sub-grid
    _close(sc.score(images[1:2], captions[3]), full[1:2, 3:4])  # a single caption string
    pi, pc = [2, 0, 1], [3, 1, 0, 2]  # permuted images and captions
    _close(sc.score(images[pi], [captions[j] for j in pc]), full[pi][:, pc])
    _close(sc.score([images[i] for i in range(3)], captions), full)  # a list of [3, H, W] tensors
    # aligned pairs give the diagonal, in any order and batch size
    _close(sc.score_pairs(images, captions[:3]), full.diagonal())
    _close(sc.score_pairs(images[[2, 0]], [captions[2], captions[0]]), full.diagonal()[[2, 0]])
    _close(DSDScorer(pipe, chunk_size=1, **kw).score_pairs(images[1:2], captions[1:2]), full[1, 1:2])


@pytest.mark.parametrize("kw", [dict(layers="all_cross"), dict(layers=["mid.a0", "up2.a2"]), dict(resolution=(64, 96)),
                                dict(resolution=128), dict(resize="center_crop")])
def test_options_keep_scores_per_sample(pipe, kw):
    "Other layer sets, resolutions and resize modes: still one image's score does not depend on the batch."
    x = torch.rand(2, 3, 100, 60, generator=torch.Generator().manual_seed(9))
    sc = DSDScorer(pipe, steps=2, **kw)
    r = sc.score(x, ["a cat", "a dog"], details=True)
    n_layers = len(sc.layers)
    assert r.lse_mean.shape == (2, 2, 2, n_layers) and torch.isfinite(r.scores).all()
    _close(DSDScorer(pipe, steps=2, chunk_size=1, **kw).score(x[1:], ["a dog"]), r.scores[1:, 1:])
    assert sc.latent_shape == (4, sc.size[0] // 8, sc.size[1] // 8)


@pytest.mark.parametrize("name", ["dsd", "latent_sample"])
def test_same_seed_identical_different_seed_differs(pipe, images, captions, name):
    kw = CONFIGS[name]
    a = DSDScorer(pipe, steps=3, seed=11, **kw).score(images[:2], captions[:2])
    b = DSDScorer(pipe, steps=3, seed=11, **kw).score(images[:2], captions[:2])
    c = DSDScorer(pipe, steps=3, seed=12, **kw).score(images[:2], captions[:2])
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    sc = DSDScorer(pipe, steps=3, seed=11, **kw)  # repeated calls on one scorer are identical too
    assert torch.equal(sc.score(images[:2], captions[:2]), sc.score(images[:2], captions[:2]))


def test_latent_sample_differs_from_mean(pipe, images, captions):
    a = DSDScorer(pipe, steps=2).score(images[:1], captions[:2])
    b = DSDScorer(pipe, steps=2, latent="sample").score(images[:1], captions[:2])
    assert (a - b).abs().max() > 1e-5


def test_steps_change_the_grid(pipe, images, captions):
    r = DSDScorer(pipe, steps=4).score(images[:1], captions[:1], details=True)
    assert r.timesteps.tolist() == reference_timesteps(4).tolist()
    assert DSDScorer(pipe).timesteps.tolist() == list(range(89, 1000, 100))


# ----------------------------------------------------------------------------- the ScoreResult breakdown

@pytest.mark.parametrize("mode", MODES)
def test_details_are_consistent(pipe, images, captions, mode):
    sc = DSDScorer(pipe, mode=mode, steps=3)
    r = sc.score(images[:2], captions[:3], details=True)
    K, L = 3, 6
    assert isinstance(r, ScoreResult) and r.mode == mode and r.captions == captions[:3]
    assert r.scores.shape == (2, 3) and r.per_timestep.shape == (2, 3, K)
    assert r.lse_mean.shape == (2, 3, K, L) and r.sq_error.shape == (2, 3, K)
    assert len(r.layers) == L and r.timesteps.tolist() == reference_timesteps(3).tolist()
    _close(r.scores, r.per_timestep.mean(-1), 1e-6)
    assert torch.equal(r.scores, sc.score(images[:2], captions[:3]))
    d = 4 * 8 * 8
    if mode == "dsd":
        assert r.lse_mean_uncond.shape == (2, K, L) and r.sq_error_uncond.shape == (2, K)
        _close(r.per_timestep, r.lse_mean.mean(-1) + r.sq_error_uncond[:, None].sqrt() - r.sq_error.sqrt(), 1e-5)
    elif mode == "attention":
        _close(r.per_timestep, r.lse_mean.mean(-1), 1e-6)
    else:
        _close(r.per_timestep, -r.sq_error / d, 1e-6)
    assert (r.sq_error > 0).all()


def test_itm_normalize_subtracts_uncond_error(pipe, images, captions):
    r = DSDScorer(pipe, mode="diffusion_itm", itm_normalize=True, steps=3).score(images[:2], captions[:2], details=True)
    _close(r.per_timestep, (r.sq_error_uncond[:, None] - r.sq_error) / (4 * 8 * 8), 1e-6)


def test_ranking(pipe, images, captions):
    r = DSDScorer(pipe, steps=2).score(images[:2], captions, details=True)
    for i in range(2):
        df = r.ranking(i)
        assert list(df["rank"]) == [1, 2, 3, 4]
        assert list(df["score"]) == sorted(r.scores[i].tolist(), reverse=True)
        assert sorted(df["caption"]) == sorted(captions)
        assert df["caption"][0] == captions[int(r.scores[i].argmax())]


def test_blocks_share_calls_not_scores(pipe, images, captions):
    "Many small blocks (2x1, 1x2, 1x1) packed into shared UNet calls score exactly as each does alone, whatever the chunk size."
    sc = DSDScorer(pipe, steps=3, chunk_size=7)
    blocks = [sc.block(images[:2], captions[0]), sc.block(images[2], captions[1:3]), sc.block(images[1], captions[3])]
    res = sc.score_blocks(blocks)
    assert [tuple(r.scores.shape) for r in res] == [(2, 1), (1, 2), (1, 1)]
    alone = [DSDScorer(pipe, steps=3, chunk_size=1).score(*a) for a in ((images[:2], captions[0]), (images[2], captions[1:3]), (images[1], captions[3]))]
    for r, a in zip(res, alone): _close(r.scores, a)


def test_scorer_does_not_leave_hooks(pipe, images, captions):
    before = dict(pipe.unet.attn_processors)
    DSDScorer(pipe, steps=2).score(images[:1], captions[:1])
    after = dict(pipe.unet.attn_processors)
    assert all(after[k] is before[k] for k in before)


def test_image_paths_and_tensors_score_alike(pipe, tmp_path):
    import numpy as np, PIL.Image
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / "x.png"; PIL.Image.fromarray(arr).save(p)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    sc = DSDScorer(pipe, steps=2)
    _close(sc.score(str(p), ["a cat"]), sc.score(t, ["a cat"]))
    _close(sc.score(PIL.Image.open(p), ["a cat"]), sc.score(t, ["a cat"]))


# ----------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("kw", [dict(mode="bogus"), dict(latent="mode"), dict(resize="fit"), dict(chunk_size=0),
                                dict(chunk_size=2.5), dict(seed="0"), dict(seed=True), dict(steps=0), dict(steps=1001),
                                dict(layers=["nosuchlayer"]), dict(resolution=60)])
def test_bad_scorer_options(pipe, kw):
    with pytest.raises(DSDInputError):
        DSDScorer(pipe, **kw)


def test_score_pairs_count_mismatch(pipe, images, captions):
    with pytest.raises(DSDInputError, match="as many images as captions"):
        DSDScorer(pipe, steps=2).score_pairs(images[:2], captions[:3])


# ----------------------------------------------------------------------------- gradients

def test_grad_flag(lora_pipe, images, captions):
    fresh_pipe, lora = lora_pipe
    unet = fresh_pipe.unet
    sc = DSDScorer(fresh_pipe, steps=2)
    s = sc.score(images[:1], captions[:2])
    assert not s.requires_grad
    s = sc.score(images[:1], captions[:2], grad=True)
    assert s.requires_grad
    (s[0, 0] - s[0, 1]).backward()
    got = [n for n, p in lora.items() if "lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0]
    assert len(got) > 0
    assert any(".attn2.to_k." in n for n in got) and any(".attn2.to_q." in n for n in got)
    # the graph does not change the values
    _close(s.detach(), sc.score(images[:1], captions[:2]), 1e-6)


# ----------------------------------------------------------------------------- reference parity

class _PlainLSEProcessor:
    "Eager attention written out by hand: logits = scale * q k^T, softmax, values; records logsumexp(logits)."
    def __init__(self, name, store): self.name, self.store = name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        assert attention_mask is None and attn.spatial_norm is None and attn.group_norm is None
        residual = hidden_states
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # [b*heads, pixels, d]
        k = attn.head_to_batch_dim(attn.to_k(ctx))            # [b*heads, tokens, d]
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        logits = torch.bmm(q, k.transpose(1, 2)) / q.shape[-1] ** 0.5
        self.store[self.name] = torch.logsumexp(logits, dim=-1)  # [2B*heads, pixels], as in the reference
        out = attn.batch_to_head_dim(torch.bmm(logits.softmax(dim=-1), v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection: out = out + residual
        return out / attn.rescale_output_factor


def _embed(pipe, texts):
    tok = pipe.tokenizer
    ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad(): return pipe.text_encoder(ids)[0]


def reference_dsd(pipe, x, texts, layer_names, steps, seed, use_bias=True):
    """The reference score for one batch of B (image, text) pairs, written from the method notes:
    VAE posterior re-sampled at every timestep (generator seed+1, created once per call), one noise per
    timestep shared by the batch, DDPM noising, one UNet call on [uncond; cond], ascore = mean over the
    6 layers of the mean of the whole [2B*heads, pixels] LSE tensor, bias = ||eps - eps_u|| - ||eps - eps_c||,
    score = mean over timesteps of ascore + bias."""
    unet, vae = pipe.unet, pipe.vae
    rate = 1000 // steps
    grid = sorted(999 - i for i in range(10, 990, rate))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    B = x.shape[0]
    ctx = torch.cat([_embed(pipe, [""] * B), _embed(pipe, texts)])
    noise = draw_noise((len(grid), 4, 8, 8), seed)
    g = torch.Generator("cpu").manual_seed(seed + 1)
    store, saved = {}, dict(unet.attn_processors)
    procs = dict(saved)
    for n in layer_names: procs[n + ".processor"] = _PlainLSEProcessor(n, store)
    unet.set_attn_processor(procs)
    try:
        per_t = []
        with torch.no_grad():
            for k, t in enumerate(grid):
                z0 = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
                eps = noise[k].expand(B, -1, -1, -1)
                x_t = sched.add_noise(z0, eps, torch.full((B,), t, dtype=torch.long))
                store.clear()
                pred = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=ctx).sample
                assert sorted(store) == sorted(layer_names)
                ascore = torch.stack([store[n].mean() for n in layer_names]).mean()
                eps_u, eps_c = pred.chunk(2)
                bias = (eps - eps_u).flatten(1).norm(dim=1) - (eps - eps_c).flatten(1).norm(dim=1)
                per_t.append(ascore + bias if use_bias else ascore.expand(B))
    finally:
        unet.set_attn_processor(saved)
    return torch.stack(per_t, 1).mean(1)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("mode", ["dsd", "attention"])
def test_reference_parity_score_pairs(pipe, images, captions, ref_layer_names, B, mode):
    steps, seed = 4, 3
    x = images_to_tensor(images[:B], size=64)
    ref = reference_dsd(pipe, x, captions[:B], ref_layer_names, steps, seed, use_bias=(mode == "dsd"))
    got = DSDScorer(pipe, mode=mode, steps=steps, seed=seed, reference_parity=True).score_pairs(images[:B], captions[:B])
    _close(got, ref, 1e-4)
    if mode == "attention":  # the reference's batch-level mean: every pair of the batch gets the same score
        assert torch.allclose(got, got[:1].expand(B))
    # and the processors were restored by both implementations
    assert not any(type(p).__name__ in ("_PlainLSEProcessor", "LSECaptureProcessor") for p in pipe.unet.attn_processors.values())


def test_reference_parity_matrix_is_batches_of_one(pipe, images, captions, ref_layer_names):
    "score() with reference_parity scores each (image, caption) pair as its own reference batch of 1."
    steps, seed = 3, 0
    got = DSDScorer(pipe, steps=steps, seed=seed, reference_parity=True).score(images[:2], captions[:2])
    x = images_to_tensor(images[:2], size=64)
    for i, j in itertools.product(range(2), range(2)):
        ref = reference_dsd(pipe, x[i:i + 1], [captions[j]], ref_layer_names, steps, seed)
        _close(got[i, j:j + 1], ref, 1e-4)


def test_reference_parity_is_not_the_clean_score(pipe, images, captions):
    "The batch-level attention mean and resampled VAE latents make parity scores differ from clean ones."
    a = DSDScorer(pipe, steps=3, reference_parity=True).score_pairs(images[:2], captions[:2])
    b = DSDScorer(pipe, steps=3).score_pairs(images[:2], captions[:2])
    assert (a - b).abs().max() > 1e-4


# ----------------------------------------------------------------------------- v-prediction

def test_scorer_converts_v_prediction_to_epsilon(pipe, images, captions):
    vsched = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    vpipe = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=vsched, safety_checker=None,
                                    feature_extractor=None, requires_safety_checker=False)
    steps, seed = 3, 5
    r = DSDScorer(vpipe, mode="diffusion_itm", steps=steps, seed=seed).score(images[:1], captions[:1], details=True)
    # independent computation: posterior mean latent, eps_hat = sqrt(abar) v + sqrt(1 - abar) x_t
    x = images_to_tensor(images[:1], size=64)
    with torch.no_grad():
        z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        E = _embed(pipe, captions[:1])
        ts = reference_timesteps(steps)
        noise = draw_noise((len(ts), 4, 8, 8), seed)
        err_v, err_raw = [], []
        for k, t in enumerate(ts.tolist()):
            ab = sched.alphas_cumprod[t]
            x_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise[k:k + 1]
            v = pipe.unet(x_t, t, encoder_hidden_states=E).sample
            eps_hat = ab.sqrt() * v + (1 - ab).sqrt() * x_t
            err_v.append((noise[k:k + 1] - eps_hat).norm())
            err_raw.append((noise[k:k + 1] - v).norm())
    _close(r.sq_error[0, 0].sqrt(), torch.stack(err_v), 1e-4)
    assert (r.sq_error[0, 0].sqrt() - torch.stack(err_raw)).abs().max() > 1e-3, "the prediction was not converted"


# ----------------------------------------------------------------------------- which tokens the attention term counts

@pytest.mark.parametrize("token_mask", ["real", "words"])
def test_token_mask_restricts_the_log_sum_exp(pipe, token_mask):
    """LSE over a subset S of the tokens = LSE over all + log(sum of the softmax probabilities over S): checked per layer
    against a capture of the unmasked probabilities of the same UNet row; the denoising error does not change."""
    from dsd_nb.attention import AttentionObserver
    sc_all, sc_m = DSDScorer(pipe, steps=3, seed=0), DSDScorer(pipe, steps=3, seed=0, token_mask=token_mask)
    caps = ["a red square", ""]
    mask = sc_m.token_masks(caps)
    n = len(pipe.tokenizer(caps[0]).input_ids)
    assert mask[0].sum() == (n if token_mask == "real" else n - 2) and mask[1].sum() == 2 and mask[:, n:].sum() == 0
    img = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    class Keep(AttentionObserver):
        wants_probs = True
        def __init__(self): self.out = {}
        def attention(self, layer, rows, lse, probs): self.out[layer.name] = (rows.caption.clone(), lse.clone(), probs.clone())
    keep = Keep()
    with sc_all.observing(keep): r_all = sc_all.score(img, caps[:1], details=True)   # one call: per timestep, the empty caption then the caption
    r_m = sc_m.score(img, caps[:1], details=True)
    exp = []
    for l in sc_all.layers:
        rows_caption, lse, probs = keep.out[l.name]
        km = torch.stack([mask[1] if int(c) < 0 else mask[0] for c in rows_caption])
        exp.append((lse + (probs * km[:, None, None, :]).sum(-1).log()).mean((1, 2)))
    exp = torch.stack(exp, 1)                                                         # [2K, L]
    _close(r_m.lse_mean[0, 0], exp[1::2], atol=1e-4)
    _close(r_m.lse_mean_uncond[0], exp[0::2], atol=1e-4)
    _close(r_m.sq_error, r_all.sq_error)
    assert (r_m.lse_mean < r_all.lse_mean).all()
    with pytest.raises(DSDInputError, match="token_mask must be one of"): DSDScorer(pipe, token_mask="padding")
