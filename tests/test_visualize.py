"""Tests for `dsd_nb.visualize`: token bookkeeping, the bounded attention trace, the figures' content, and the explorer
widget (driven programmatically, with the UNet's forward calls counted). CPU only, tiny random pipeline."""
import copy, os
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from dsd_nb.core import DSDInputError, add_noise
from dsd_nb.attention import AttentionCapture
from dsd_nb.scoring import DSDScorer
from dsd_nb.scenes import scene_example, render
from dsd_nb.tracing import caption_tokens, word_spans, pooled_grid, reduce_probs, AttentionTrace, trace_nbytes
from dsd_nb.visualize import (contributions, plot_word_maps, plot_layer_grid, plot_timestep_strip, plot_contributions,
                              plot_score_distribution, explore, Explorer, _order, object_box, box_density,
                              word_on_object)


@pytest.fixture(scope="module")
def scene():
    s, cap, negs = scene_example("test", 0)
    return render(s, 64), [cap.text()] + [c.text() for _, c in negs][:2]


def trace_attention(scorer, image, captions, **kw):
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
    try: tr = trace_attention(sc, image, caps)
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
    tr = trace_attention(sc, image, caps[:2], per_head=True, max_grid=4, dtype=torch.float16)
    for l in tr.layers:
        p = tr.probs[l.name]
        assert p.dtype == torch.float16 and p.shape[2] == l.heads
        assert tuple(p.shape[-2:]) == pooled_grid(l.grid(tr.latent_hw), 4)[:2] and max(p.shape[-2:]) <= 4
        torch.testing.assert_close(p.float().sum(3), torch.ones(p.shape[:3] + p.shape[4:]), atol=5e-3, rtol=0)
    c = Calls(pipe.unet)
    try:
        with pytest.raises(DSDInputError, match="max_bytes"): trace_attention(sc, image, caps, max_bytes=100)
    finally: c.remove()
    assert c.n == 0                                   # refused before any UNet call
    with pytest.raises(DSDInputError, match="reference_parity=False"):
        trace_attention(DSDScorer(pipe, steps=2, reference_parity=True), image, caps)


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


# ---- figures ----------------------------------------------------------------------------------------------------

def _panels(fig): return [a for a in fig.axes if a.get_label() != "<colorbar>"]


def test_plot_word_maps_content(traced):
    _, tr, _ = traced
    l0 = tr.layers[0]
    fig = plot_word_maps(tr, 0, layer=l0.short, timestep=tr.timesteps[1], alpha=0.3)
    try:
        assert isinstance(fig, Figure)
        axs = _panels(fig)
        assert len(axs) == len(tr.words[0]) + 1
        hms = [tr.word_map(0, w, l0.short, tr.timesteps[1]) for w in range(len(tr.words[0]))]
        for (word, _), a, hm in zip(tr.words[0], axs[1:], hms):
            im = a.images[-1]
            assert im.get_array().shape == l0.grid(tr.latent_hw)
            assert list(im.get_extent()) == [0, 64, 64, 0] and im.get_alpha() == 0.3
            np.testing.assert_allclose(im.get_array(), hm.numpy())
            assert im.get_clim() == pytest.approx((0.0, max(float(h.max()) for h in hms)))
            assert f"'{word}'" in a.get_title() and l0.short in a.get_title()
        assert f"t={tr.timesteps[1]}" in fig.get_suptitle()
    finally: fig.clf()
    fig = plot_word_maps(tr, 1, words=["red"] if "red" in [w for w, _ in tr.words[1]] else [0])
    try: assert len(_panels(fig)) == 2 and "all layers" in _panels(fig)[1].get_title()
    finally: fig.clf()


def test_plot_layer_grid_content(traced):
    _, tr, _ = traced
    fig = plot_layer_grid(tr, 0, timestep="mean")
    try:
        axs, nw = _panels(fig), len(tr.words[0])
        assert len(axs) == len(tr.layers) * nw
        order = _order(tr.layers)
        assert [l.place for l in order] == sorted([l.place for l in order], key=["down", "mid", "up"].index)
        for i, l in enumerate(order):
            for j, (word, _) in enumerate(tr.words[0]):
                a = axs[i * nw + j]
                assert a.images[-1].get_array().shape == l.grid(tr.latent_hw)
                assert l.short in a.get_title() and f"'{word}'" in a.get_title()
        assert len({a.images[-1].get_clim() for a in axs}) == 1
    finally: fig.clf()


def test_plot_timestep_strip_content(traced):
    _, tr, _ = traced
    fig = plot_timestep_strip(tr, 0, word=1, layer=tr.layers[-1].short)
    try:
        axs = _panels(fig)
        assert [a.get_title() for a in axs] == [f"t={t}" for t in tr.timesteps] + ["mean over t"]
        assert all(a.images[-1].get_array().shape == tr.layers[-1].grid(tr.latent_hw) for a in axs)
        np.testing.assert_allclose(axs[0].images[-1].get_array(), tr.word_map(0, 1, tr.layers[-1].short, tr.timesteps[0]).numpy())
        assert tr.words[0][1][0] in fig.get_suptitle() and tr.layers[-1].short in fig.get_suptitle()
    finally: fig.clf()


def test_contributions_and_chart(traced):
    _, tr, _ = traced
    c = contributions(tr.result)
    torch.testing.assert_close(c["layers"].sum(-1) + c["denoising"], tr.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["timesteps"].sum(-1), tr.scores, atol=1e-5, rtol=0)
    M, L = len(tr.captions), len(tr.layers)
    fig = plot_contributions(tr, positive=0)
    try:
        assert len(fig.axes) == 3
        assert len(fig.axes[0].patches) == M * L and len(fig.axes[2].patches) == (M - 1) * (L + 1)
        heights = np.array([b.get_height() for b in fig.axes[2].patches[:L + 1]])   # first negative's margin parts
        want = torch.cat([c["layers"][0] - c["layers"][1], (c["denoising"][0] - c["denoising"][1])[None]]).numpy()
        np.testing.assert_allclose(heights, want, atol=1e-6)
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [l.short for l in tr.layers]
        assert len(fig.axes[1].lines) == M
    finally: fig.clf()


def test_plot_score_distribution():
    rng = np.random.default_rng(0)
    fig = plot_score_distribution(rng.normal(1, 1, 40), rng.normal(0, 1, 60))
    try:
        assert "40 positives, 60 negatives" in fig.axes[0].get_title()
        assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["negative", "positive"]
    finally: fig.clf()
    with pytest.raises(DSDInputError, match="kinds has"): plot_score_distribution([1.0], [0.0, 1.0], kinds=["a"])


# ---- maps against a known layout -------------------------------------------------------------------------------------

def _box_trace(tr, scene, swap=False):
    "Copy of a trace whose caption-0 word maps are the indicator of their object's square (or of the other one's)."
    import dataclasses
    size, probs = tr.image.size[0], {}
    for l in tr.layers:
        p = torch.zeros_like(tr.probs[l.name]); gh, gw = p.shape[-2:]
        ys, xs = (torch.arange(gh) + .5) * size / gh, (torch.arange(gw) + .5) * size / gw
        for word, pos in tr.words[0]:
            owners = [i for i, o in enumerate(scene.objects) if word in (o.colour, o.shape)]
            if len(owners) != 1: continue
            x0, y0, x1, y1 = object_box(scene.objects[1 - owners[0] if swap else owners[0]], size)
            p[0, :, :, pos] = (((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None]).float()
        probs[l.name] = p
    out = copy.copy(tr); out.probs = probs
    return out


def test_word_on_object_controls(traced):
    _, tr, _ = traced
    scene = scene_example("test", 0)[0]
    good = word_on_object(_box_trace(tr, scene), scene)
    bad = word_on_object(_box_trace(tr, scene, swap=True), scene)
    assert len(good) >= 2 and all(r["hit"] for r in good) and not any(r["hit"] for r in bad)
    for r in good:                                     # only words naming exactly one object are checked
        assert sum(r["word"] in (o.colour, o.shape) for o in scene.objects) == 1
    for layer in [l.short for l in tr.layers if tr.grid(l) == tr.latent_hw]:   # per full-resolution layer too
        assert all(r["hit"] for r in word_on_object(_box_trace(tr, scene), scene, layer=layer))
    assert box_density(torch.arange(4.).view(2, 2), (32, 0, 64, 32), 64) == 1.0
    with pytest.raises(DSDInputError, match="empty box"): box_density(torch.ones(2, 2), (5, 5, 5, 9), 64)
    one = scene.__class__(scene.objects[:1])
    with pytest.raises(DSDInputError, match="two-object scene"): word_on_object(tr, one)


def test_trace_nbytes_matches(traced):
    sc, tr, _ = traced
    assert trace_nbytes(tr.layers, tr.latent_hw, len(tr.captions), len(tr.timesteps), len(tr.tokens[0]) - 1) == tr.nbytes
    assert trace_nbytes(tr.layers, tr.latent_hw, 2, 3, 5, dtype=torch.float16) * 2 == trace_nbytes(tr.layers, tr.latent_hw, 2, 3, 5)


# ---- the explorer ------------------------------------------------------------------------------------------------

def test_explorer_redraws_from_cache(pipe, scene):
    image, caps = scene
    c = Calls(pipe.unet)
    try:
        ex = explore(pipe, image, caps, steps=2, seed=0, layers="all_cross", per_head=True)
        n0 = c.n
        assert n0 == ex.trace.unet_calls > 0
        assert isinstance(ex, Explorer) and ex.maps_view.value[:4] == b"\x89PNG" and ex.why_view.value[:4] == b"\x89PNG"
        # the ranking lists every caption, best first
        order = sorted(range(len(caps)), key=lambda j: -float(ex.trace.scores[j]))
        assert ex.caption.value == order[0] and [v for _, v in ex.caption.options] == order
        assert all(cap in ex.ranking.value for cap in caps)
        l0 = ex.trace.layers[0]
        seen, why = {ex.maps_view.value}, ex.why_view.value
        for ctl, v in [(ex.word, 1), (ex.layer, l0.short), (ex.timestep, ex.trace.timesteps[0]), (ex.head, 1), (ex.alpha, 0.25)]:
            before = ex.renders
            ctl.value = v
            assert ex.renders == before + 1, ctl.description
            assert ex.maps_view.value not in seen, ctl.description
            seen.add(ex.maps_view.value)
        assert ex.why_view.value == why                          # the breakdown depends on the caption only
        ex.caption.value = order[1]
        assert ex.maps_view.value not in seen and ex.why_view.value != why
        assert ex.word.value == 0 and [w for w, _ in ex.word.options] == [w for w, _ in ex.trace.words[order[1]]]
        # what the widget shows is the plotting function's figure for the same controls
        fig = ex.figure()
        try:
            a = _panels(fig)[1]
            assert l0.short in a.get_title() and a.images[-1].get_alpha() == 0.25
        finally: fig.clf()
        # the head menu offers only the heads the chosen layer has ("all": the heads every layer has)
        for l in ex.trace.layers:
            ex.layer.value = l.short
            assert [v for _, v in ex.head.options] == ["mean"] + list(range(l.heads)), l.short
        big = max(ex.trace.layers, key=lambda l: l.heads)
        ex.layer.value = big.short; ex.head.value = big.heads - 1
        before = ex.renders
        ex.layer.value = "all"
        common = min(l.heads for l in ex.trace.layers)
        assert [v for _, v in ex.head.options] == ["mean"] + list(range(common))
        assert ex.head.value == (big.heads - 1 if big.heads <= common else "mean") and ex.renders == before + 1
        assert ex.message.value == ""
        figs = ex.static_figures()
        assert len(figs) == 4 and all(isinstance(f, Figure) for f in figs)
        for f in figs: f.clf()
        assert c.n == n0                                          # no control ever re-ran the UNet
    finally: c.remove()


def test_explore_from_trace_and_errors(pipe, traced):
    _, tr, _ = traced
    c = Calls(pipe.unet)
    try: ex = explore(tr)
    finally: c.remove()
    assert c.n == 0 and ex.trace is tr
    assert [o for _, o in ex.head.options] == ["mean"]                  # head-averaged trace: no head choice
    with pytest.raises(DSDInputError, match="needs an image and captions"): explore(pipe)


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
