"""Tests for the traced scoring call behind `dsd_nb.visualize`: token bookkeeping and the bounded attention trace (with the
UNet's forward calls counted), and the opt-in browser and live-Jupyter checks of the explorer. The figures' content and the
explorer driven programmatically are checked in 10_visualize. CPU only, tiny random pipeline."""
import os
import pytest
import torch

from dsd_nb.core import DSDInputError, add_noise
from dsd_nb.attention import AttentionCapture
from dsd_nb.scoring import DSDScorer
from dsd_nb.scenes import scene_example, render
from dsd_nb.tracing import caption_tokens, word_spans, pooled_grid, reduce_probs, trace_nbytes


@pytest.fixture(scope="module")
def scene():
    s, cap, negs = scene_example("test", 0)
    return render(s, 64), [cap.text()] + [c.text() for _, c in negs][:2]


def trace_call(scorer, image, captions, **kw):
    "One traced scoring call of `image` against `captions`."
    with scorer.trace(**kw) as tr: scorer.score(image, captions)
    return tr


class Calls:
    "Count a UNet's forward calls with a pre-hook."
    def __init__(self, unet): self.n = 0; self.h = unet.register_forward_pre_hook(self._hook)
    def _hook(self, *a): self.n += 1
    def remove(self): self.h.remove()


@pytest.fixture(scope="module")
def traced(pipe, scene):
    "(scorer, trace, UNet calls made by the trace) for 3 captions, 3 timesteps, all cross-attention layers."
    image, caps = scene
    sc = DSDScorer(pipe, steps=3, seed=0, layers="all_cross")
    c = Calls(pipe.unet)
    try: tr = trace_call(sc, image, caps)
    finally: c.remove()
    return sc, tr, c.n


# ---- tokens -------------------------------------------------------------------------------------------------

def test_tokens_kinds_and_word_spans(pipe):
    tok = pipe.tokenizer
    ts = caption_tokens(tok, "a red zebra")
    assert ts[0].kind == "start" and ts[0].index == 0 and ts[-1].kind == "end"
    spans = word_spans(tok, ts)
    assert [w for w, _ in spans] == ["a", "red", "zebra"]
    assert spans[0][1] == [1] and spans[1][1] == [2]
    z = spans[2][1]                                   # 'zebra' is not in the tiny vocabulary: several BPE pieces
    assert len(z) > 1 and z == list(range(3, len(ts) - 1))
    assert all(ts[i].word == 2 for i in z) and ts[z[-1]].piece.endswith("</w>")
    padded = caption_tokens(tok, "a red zebra", n_keep=len(ts) + 2)
    assert [t.kind for t in padded[-3:]] == ["end", "pad", "pad"]
    with pytest.raises(DSDInputError, match="n_keep"): caption_tokens(tok, "a", n_keep=0)


def test_tokens_truncated_caption(pipe):
    tok = pipe.tokenizer
    ts = caption_tokens(tok, " ".join(["red"] * 100))
    assert len(ts) == tok.model_max_length and ts[-1].kind == "end"
    assert len(word_spans(tok, ts)) == tok.model_max_length - 2


# ---- reduction ------------------------------------------------------------------------------------------------

def test_reduce_probs_keeps_distributions_and_mass():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(3, 4, 16 * 12, 77, generator=g), -1)
    r = reduce_probs(p, (16, 12), n_keep=5, max_grid=8)
    assert r.shape == (3, 1, 6, 8, 6)
    torch.testing.assert_close(r.sum(2), torch.ones(3, 1, 8, 6), atol=1e-5, rtol=0)
    kept = torch.cat([p.mean(1)[..., :5], p.mean(1)[..., 5:].sum(-1, keepdim=True)], -1)   # [3, pixels, 6]
    torch.testing.assert_close(r.mean((-1, -2))[:, 0], kept.mean(1), atol=1e-6, rtol=0)
    # per head, native grid: a plain reshape of the input
    full = reduce_probs(p, (16, 12), n_keep=5, per_head=True, max_grid=None)
    assert full.shape == (3, 4, 6, 16, 12)
    torch.testing.assert_close(full[1, 2, 3], p[1, 2, :, 3].view(16, 12))
    with pytest.raises(DSDInputError, match="expected probabilities"): reduce_probs(p, (8, 8), 5)


def test_pooled_grid():
    assert pooled_grid((8, 8), 32) == (8, 8, 1)
    assert pooled_grid((64, 64), 32) == (32, 32, 2)
    assert pooled_grid((96, 64), 32) == (32, 22, 3)
    assert pooled_grid((64, 64), None) == (64, 64, 1)
    with pytest.raises(DSDInputError): pooled_grid((8, 8), 0)


# ---- the trace -------------------------------------------------------------------------------------------------

def test_trace_scores_calls_and_shapes(pipe, scene, traced):
    image, caps = scene
    sc, tr, n_trace = traced
    c = Calls(pipe.unet)
    try: plain = sc.score(image, caps, details=True)
    finally: c.remove()
    assert n_trace == c.n == tr.unet_calls                    # tracing adds no UNet call
    torch.testing.assert_close(tr.scores, plain.scores[0], atol=0, rtol=0)
    torch.testing.assert_close(tr.result.lse_mean, plain.lse_mean, atol=0, rtol=0)
    assert tr.timesteps == [int(t) for t in sc.timesteps]
    n_keep = max(len(pipe.tokenizer(c).input_ids) for c in caps)
    for l in tr.layers:
        p = tr.probs[l.name]
        assert p.device.type == "cpu" and p.dtype == torch.float32
        assert p.shape == (len(caps), 3, 1, n_keep + 1) + l.grid(tr.latent_hw)
        torch.testing.assert_close(p.sum(3), torch.ones_like(p.sum(3)), atol=1e-5, rtol=0)
    assert tr.nbytes == sum(p.numel() * 4 for p in tr.probs.values())
    assert all(len(ts) == n_keep + 1 and ts[-1].kind == "pad" for ts in tr.tokens)
    assert "MiB" in repr(tr)


def test_trace_maps_match_a_direct_capture(pipe, traced):
    "The row bookkeeping is right: a map in the trace equals the one captured by running that (caption, timestep) row alone."
    sc, tr, _ = traced
    m, k = 1, 2
    E = sc.encode_captions(tr.captions)
    mean, std = sc.encode_images([tr.image])
    z = sc.clean_latents(mean, std)[:, 0]
    t = sc.timesteps[k:k + 1]
    x_t = add_noise(sc.sched, z, sc.noise[k:k + 1], t)
    n_keep = tr.probs[tr.layers[0].name].shape[3] - 1
    with torch.no_grad(), AttentionCapture(pipe.unet, sc.layers, probs=True) as cap:
        pipe.unet(x_t, t, encoder_hidden_states=E[m:m + 1])
    for l in tr.layers:
        direct = cap.probs[l.name][0].mean(0)[:, :n_keep].T.reshape(n_keep, *l.grid(tr.latent_hw))
        torch.testing.assert_close(tr.probs[l.name][m, k, 0, :n_keep], direct, atol=1e-4, rtol=1e-3)


def test_trace_per_head_pooling_dtype_and_budget(pipe, scene):
    image, caps = scene
    sc = DSDScorer(pipe, steps=2, seed=0, layers="all_cross")
    tr = trace_call(sc, image, caps[:2], per_head=True, max_grid=4, dtype=torch.float16)
    for l in tr.layers:
        p = tr.probs[l.name]
        assert p.dtype == torch.float16 and p.shape[2] == l.heads
        assert tuple(p.shape[-2:]) == pooled_grid(l.grid(tr.latent_hw), 4)[:2] and max(p.shape[-2:]) <= 4
        torch.testing.assert_close(p.float().sum(3), torch.ones(p.shape[:3] + p.shape[4:]), atol=5e-3, rtol=0)
    c = Calls(pipe.unet)
    try:
        with pytest.raises(DSDInputError, match="max_bytes"): trace_call(sc, image, caps, max_bytes=100)
    finally: c.remove()
    assert c.n == 0                                   # refused before any UNet call
    with pytest.raises(DSDInputError, match="reference_parity=False"):
        trace_call(DSDScorer(pipe, steps=2, reference_parity=True), image, caps)


def test_word_maps_and_lookup_errors(traced):
    _, tr, _ = traced
    l0 = tr.layers[0]
    mp = tr.maps(0)
    torch.testing.assert_close(mp.sum(0), torch.ones(mp.shape[1:]), atol=1e-5, rtol=0)   # 'all' keeps distributions
    assert tuple(mp.shape[1:]) == max((tr.grid(l) for l in tr.layers), key=lambda g: g[0] * g[1])
    w, pos = tr.words[0][1]
    torch.testing.assert_close(tr.word_map(0, w, l0.short, tr.timesteps[0]),
                               tr.probs[l0.name][0, 0, 0, pos].sum(0))
    torch.testing.assert_close(tr.word_map(tr.captions[0], 1, l0.name), tr.probs[l0.name][0, :, 0, pos].sum(1).mean(0))
    for bad, msg in [(dict(timestep=5), "traced timesteps"), (dict(head=0), "per_head=True"), (dict(layer="up9.a0"), "was not traced")]:
        with pytest.raises(DSDInputError, match=msg): tr.maps(0, **bad)
    with pytest.raises(DSDInputError, match="word must be"): tr.word_map(0, "zebra")
    with pytest.raises(DSDInputError, match="caption must be"): tr.maps(7)


def test_trace_nbytes_matches(traced):
    sc, tr, _ = traced
    assert trace_nbytes(tr.layers, tr.latent_hw, len(tr.captions), len(tr.timesteps), len(tr.tokens[0]) - 1) == tr.nbytes
    assert trace_nbytes(tr.layers, tr.latent_hw, 2, 3, 5, dtype=torch.float16) * 2 == trace_nbytes(tr.layers, tr.latent_hw, 2, 3, 5)


# ---- the browser check (needs Chromium; opt-in) -------------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("DSD_NB_BROWSER"), reason="set DSD_NB_BROWSER=1 to run the headless-Chromium check (slow)")
def test_tutorial_in_headless_chromium(tmp_path):
    import shutil, subprocess, sys
    from pathlib import Path
    if not (shutil.which("chromium") or shutil.which("chromium-browser")): pytest.skip("Chromium is not installed")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tests" / "browser_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "screenshot.png").exists()


@pytest.mark.skipif(not os.environ.get("DSD_NB_LIVE_JUPYTER"), reason="set DSD_NB_LIVE_JUPYTER=1 to drive the explorer in a live JupyterLab, Notebook 7 and classic Notebook (setup: tests/live_jupyter_check.py)")
def test_explorer_live_in_jupyterlab_and_notebook(tmp_path):
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tests" / "live_jupyter_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode == 77: pytest.skip("the live check's setup is missing: " + r.stdout[-500:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json
    passes = json.loads((tmp_path / "summary.json").read_text())["passes"]
    assert {"lab", "notebook"} <= {p["ui"] for p in passes}  # and "classic" (nbclassic) when it is installed
    assert all(p["checks"] and all(p["checks"].values()) for p in passes), passes
