"""SDXL (issue 20): the tiny SDXL pipeline scored, traced, explored and trained with the same invariants as SD
(conditioning as SDXL's own pipeline builds it, hooking leaves the UNet's output unchanged, per-sample scores, seeds)."""
import PIL.Image
import pytest
import torch

from dsd_nb.core import DSDInputError, add_noise
from dsd_nb.models import tiny_sdxl_pipeline, quiet_libraries
from dsd_nb.attention import AttentionCapture
from dsd_nb.scoring import DSDScorer, encode_text
from dsd_nb.models import pipeline_family
from dsd_nb.evaluate import scene_ranking_examples, example_generator
from dsd_nb.prompt_learning import ranking_scores, evaluate_ranking, PromptConfig, train_prompt
from dsd_nb.trainables import add_lora, lora_parameters, save_adapter, add_soft_prompt

RED = PIL.Image.new("RGB", (64, 64), (220, 30, 30))
BLUE = PIL.Image.new("RGB", (80, 50), (20, 40, 200))
CAPS = ["a red square", "a blue circle", "a green star"]


@pytest.fixture(scope="module")
def xl():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture(scope="module")
def shots():
    return scene_ranking_examples("fewshot", 3, direction="i2t")


def test_conditioning_is_sdxl_pipelines_own(xl):
    E, pooled = encode_text(xl, CAPS)
    with torch.no_grad():
        ref, neg, ref_pooled, neg_pooled = xl.encode_prompt(CAPS, device="cpu", do_classifier_free_guidance=True)
    assert E.shape == (3, 77, 64) and pooled.shape == (3, 32) and pipeline_family(xl) == "sdxl"
    torch.testing.assert_close(E, ref, rtol=0, atol=1e-6); torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-6)
    s = DSDScorer(xl, steps=3)
    uE, uP = s.uncond_text()
    assert torch.equal(uE, neg[:1]) and torch.equal(uP, neg_pooled[:1]) and not uE.any()  # force_zeros_for_empty_prompt
    ids = xl._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(s.time_ids, ids)


def test_denoising_error_is_the_unets_own_with_sdxl_conditioning(xl):
    "The squared errors the scorer reports are ||eps - unet(x_t, t, caption's hidden states, pooled, time ids)||^2, recomputed by hand."
    s = DSDScorer(xl, steps=3, seed=1)
    r = s.score(RED, CAPS[:2], details=True)
    mean, _ = s.encode_images(RED)
    z0 = mean * xl.vae.config.scaling_factor
    E, pooled = encode_text(xl, CAPS[:2])
    with torch.no_grad():
        for k, t in enumerate(s.timesteps):
            x_t = add_noise(s.sched, z0, s.noise[k:k + 1], t[None])
            for m in range(2):
                eps = xl.unet(x_t, t[None], encoder_hidden_states=E[m:m + 1],
                              added_cond_kwargs=dict(text_embeds=pooled[m:m + 1], time_ids=s.time_ids)).sample
                assert torch.allclose(r.sq_error[0, m, k], (s.noise[k] - eps[0]).pow(2).sum(), rtol=1e-4), (k, m)
            eps0 = xl.unet(x_t, t[None], encoder_hidden_states=torch.zeros_like(E[:1]),
                           added_cond_kwargs=dict(text_embeds=torch.zeros_like(pooled[:1]), time_ids=s.time_ids)).sample
            assert torch.allclose(r.sq_error_uncond[0, k], (s.noise[k] - eps0[0]).pow(2).sum(), rtol=1e-4)
    # the caption matters: without the pooled text (zeros) the errors change
    assert not torch.allclose(r.sq_error[0, 0], r.sq_error[0, 1])


@pytest.mark.parametrize("fused", [True, False])
def test_hooking_leaves_the_unet_output_unchanged(xl, fused):
    E, pooled = encode_text(xl, CAPS[:2])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    kw = dict(encoder_hidden_states=E, added_cond_kwargs=dict(text_embeds=pooled, time_ids=torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)))
    with torch.no_grad():
        plain = xl.unet(x, torch.tensor([500, 500]), **kw).sample
        with AttentionCapture(xl.unet, "all_cross", fused=fused) as cap: hooked = xl.unet(x, torch.tensor([500, 500]), **kw).sample
    assert torch.equal(plain, hooked) and len(cap.lse) == 17 and cap.layer_means().shape == (2, 17)


def test_scores_are_per_sample_and_seeded(xl):
    s = DSDScorer(xl, steps=4, seed=0)
    full = s.score([RED, BLUE], CAPS)
    assert full.shape == (2, 3) and torch.isfinite(full).all()
    alone = torch.stack([torch.cat([s.score(im, c) for c in CAPS], 1)[0] for im in (RED, BLUE)])
    torch.testing.assert_close(full, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(DSDScorer(xl, steps=4, chunk_size=3).score([BLUE, RED], CAPS[::-1]), full.flip(0).flip(1), rtol=0, atol=1e-5)
    assert torch.equal(DSDScorer(xl, steps=4, seed=0).score([RED, BLUE], CAPS), full)
    assert not torch.allclose(DSDScorer(xl, steps=4, seed=1).score([RED, BLUE], CAPS), full)


@pytest.mark.parametrize("kw", [dict(mode="attention"), dict(mode="diffusion_itm"), dict(mode="diffusion_itm", itm_normalize=True),
                                dict(reference_parity=True), dict(token_mask="words"), dict(fused=False), dict(latent="sample")])
def test_every_scorer_setting_runs_on_sdxl(xl, kw):
    r = DSDScorer(xl, steps=3, **kw).score([RED, BLUE], CAPS, details=True)
    assert r.scores.shape == (2, 3) and torch.isfinite(r.scores).all() and r.lse_mean.shape == (2, 3, 3, 6)


def test_fused_and_explicit_scores_agree_on_sdxl(xl):
    a = DSDScorer(xl, steps=4).score([RED, BLUE], CAPS, details=True)
    b = DSDScorer(xl, steps=4, fused=False).score([RED, BLUE], CAPS, details=True)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.lse_mean, b.lse_mean, rtol=0, atol=1e-5)


def test_bf16_scoring(xl):
    x16 = tiny_sdxl_pipeline(seed=0).to(torch.bfloat16)
    a, b = DSDScorer(x16, steps=3).score(RED, CAPS), DSDScorer(xl, steps=3).score(RED, CAPS)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=0.05), (a, b)


def test_trace_and_explorer_on_sdxl(xl):
    from dsd_nb.visualize import explore
    s = DSDScorer(xl, steps=3)
    plain = s.score(RED, CAPS)
    with s.trace() as tr: traced = s.score(RED, CAPS)
    assert torch.equal(plain, traced)  # tracing moves no score
    m = tr.word_map(caption=0, word="red")
    assert m.ndim == 2 and torch.isfinite(m).all()
    ex = explore(xl, RED, CAPS, steps=3)
    assert len(ex.static_figures()) >= 1


def test_ranking_scores_independent_of_batch_on_sdxl(xl):
    ex = scene_ranking_examples("fewshot", 2, direction="both")
    gens = lambda: [example_generator(5, 3, i) for i in range(len(ex))]
    a = ranking_scores(DSDScorer(xl, chunk_size=1), ex, gens(), draws=2)
    cache = {}
    b = ranking_scores(DSDScorer(xl, chunk_size=64), ex, gens(), draws=2, cache=cache)
    c = [ranking_scores(DSDScorer(xl), [e], [example_generator(5, 3, i)], draws=2)[0] for i, e in enumerate(ex)]
    for x, y, z in zip(a, b, c): assert torch.allclose(x, y, atol=1e-5) and torch.allclose(x, z, atol=1e-5)
    assert any(k[0] == "caption" and k[1] and v[1] is not None for k, v in cache.items())  # pooled kept with the hidden states


def test_lora_training_on_sdxl_and_stock_loading(tmp_path, shots):
    p = tiny_sdxl_pipeline(seed=0)
    before = evaluate_ranking(DSDScorer(p, seed=0), shots, draws=2)["loss"]
    cfg = PromptConfig(train_steps=8, batch_size=3, lr=2e-2, rank=2, ckpt_every=100, val_every=100, chunk_size=64)
    train_prompt(p, shots, config=cfg, out=tmp_path / "run", progress=False)
    assert not any(q.requires_grad for q in p.text_encoder_2.parameters())
    after_scorer = DSDScorer(p, seed=0, steps=2)
    after = evaluate_ranking(DSDScorer(p, seed=0), shots, draws=2)["loss"]
    assert after < before, (before, after)
    assert (tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    other = tiny_sdxl_pipeline(seed=0)  # SDXL's own loader reads the saved adapter
    with quiet_libraries(): other.load_lora_weights(str(tmp_path / "run" / "adapter"), adapter_name="default")
    e = shots[0]
    assert torch.equal(after_scorer.score(e.images, e.captions), DSDScorer(other, seed=0, steps=2).score(e.images, e.captions))


def test_soft_prompt_is_refused_on_sdxl(tmp_path, shots):
    p = tiny_sdxl_pipeline(seed=0)
    with pytest.raises(DSDInputError, match="SDXL pipeline has two"): add_soft_prompt(p)
    with pytest.raises(DSDInputError, match="train a LoRA adapter instead"):
        train_prompt(p, shots, config=PromptConfig(method="soft_prompt", train_steps=1), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_sdxl_blocks_need_pooled_text(xl):
    s = DSDScorer(xl, steps=2)
    b = s.block(RED, CAPS)
    b.pooled = None
    with pytest.raises(DSDInputError, match="pooled"): s.score_blocks([b])


def test_dsd_train_refuses_soft_prompt_on_sdxl_before_loading(tmp_path, xl, capsys):
    "From the folder's configs: the weights (broken here) are never read."
    from dsd_nb.models import save_pipeline
    from dsd_nb.cli import dsd_train
    folder = save_pipeline(xl, tmp_path / "xl")
    for w in folder.rglob("*.safetensors"): w.write_bytes(b"not safetensors")
    rc = dsd_train(["--out", str(tmp_path / "run"), "--model", str(folder), "--method", "soft_prompt", "--train_steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "this SDXL pipeline has two" in err, err
    assert not (tmp_path / "run").exists()
