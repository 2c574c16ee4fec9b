"""attention: capturing the cross-attention log-sum-exp with stock diffusers processors.

The capture must not change the UNet's output (bit for bit), must restore the processors it replaced
(also after an exception), must nest, must report exactly logsumexp(scale * q k^T) over the tokens,
must work with a PEFT LoRA adapter (gradients included), and its "reference" preset must pick the
six layers of dsd-method.md section 2.9. With `fused=True` (the default) output and LSE come from one SDPA kernel
where that applies (no mask, no gradient through the LSE); everywhere else, and with `fused=False`, from explicit logits.
"""
import warnings
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from dsd_nb.core import DSDInputError
from dsd_nb import attention
from dsd_nb.attention import (AttentionCapture, AttentionObserver, LSECaptureProcessor, CrossAttnLayer, Rows, ROWS_KEY,
                              cross_attention_layers, select_layers, fused_attention)
from dsd_nb.models import sd21_unet


@pytest.fixture(scope="module")
def unet_inputs(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([89, 889])
    return x, t, ctx


def _run(unet, x, t, ctx):
    return unet(x, t, encoder_hidden_states=ctx).sample


def _procs(unet):
    return dict(unet.attn_processors)


# ----------------------------------------------------------------------------- exactness and restoration

@pytest.mark.parametrize("layers", ["reference", "all_cross"])
def test_capture_leaves_unet_output_unchanged(pipe, unet_inputs, layers):
    unet = pipe.unet
    assert unet.dtype == torch.float32
    with torch.no_grad():
        ref = _run(unet, *unet_inputs)
        with AttentionCapture(unet, layers) as cap:
            out = _run(unet, *unet_inputs)
        with AttentionCapture(unet, layers, probs=True) as cap_p:
            out_p = _run(unet, *unet_inputs)
    assert torch.equal(out, ref)
    assert torch.equal(out_p, ref)
    n = 6 if layers == "reference" else len(cross_attention_layers(unet))
    assert len(cap.lse) == n and len(cap_p.probs) == n
    assert cap.layer_means().shape == (2, n)
    assert torch.isfinite(cap.layer_means()).all()


def test_capture_only_replaces_selected_processors(pipe):
    unet = pipe.unet
    before = _procs(unet)
    with AttentionCapture(unet, "reference") as cap:
        inside = _procs(unet)
        keys = {l.processor_key for l in cap.layers}
        for k, p in inside.items():
            if k in keys: assert isinstance(p, LSECaptureProcessor)
            else: assert getattr(p, "processor", None) is before[k], f"{k}: its own processor no longer does its arithmetic"
    assert all(k.endswith("attn2.processor") for k in keys)


def test_processors_restored_after_exit(pipe, unet_inputs):
    unet = pipe.unet
    before = _procs(unet)
    with torch.no_grad(), AttentionCapture(unet, "all_cross"):
        _run(unet, *unet_inputs)
    after = _procs(unet)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert not any(isinstance(p, LSECaptureProcessor) for p in after.values())


def test_processors_restored_after_exception(pipe, unet_inputs):
    unet = pipe.unet
    before = _procs(unet)
    with pytest.raises(ZeroDivisionError):
        with torch.no_grad(), AttentionCapture(unet, "reference"):
            _run(unet, *unet_inputs)
            1 / 0
    after = _procs(unet)
    assert all(after[k] is before[k] for k in before)
    # and the forward pre-hook is gone: a capture made later counts only its own calls
    with torch.no_grad(), AttentionCapture(unet, "reference") as cap:
        _run(unet, *unet_inputs)
    assert cap.calls == 1


def test_processors_restored_after_exception_inside_unet(pipe, unet_inputs):
    "An error raised by the UNet itself (wrong context width) also leaves the processors as they were."
    unet = pipe.unet
    before = _procs(unet)
    x, t, _ = unet_inputs
    with pytest.raises(Exception):
        with torch.no_grad(), AttentionCapture(unet, "all_cross"):
            _run(unet, x, t, torch.randn(2, 77, 7))
    after = _procs(unet)
    assert all(after[k] is before[k] for k in before)


def test_rows_travel_with_the_call_and_reach_observers(pipe, unet_inputs):
    "A call's `Rows` (in cross_attention_kwargs) reach every observer of every hooked layer; the key mask restricts the LSE; output unchanged."
    unet = pipe.unet
    x, t, ctx = unet_inputs
    seen = []
    class Watch(AttentionObserver):
        def attention(self, layer, rows, lse, probs): seen.append((layer.short, None if rows is None else rows.caption.tolist(), tuple(lse.shape)))
    km = torch.zeros(2, 77, dtype=torch.bool); km[:, :3] = True
    rows = Rows(block=torch.zeros(2, dtype=torch.long), image=torch.zeros(2, dtype=torch.long), caption=torch.tensor([-1, 4]), timestep=t, key_mask=km)
    with torch.no_grad():
        ref = _run(unet, x, t, ctx)
        with AttentionCapture(unet, "reference", observers=[Watch()]) as cap:
            out = unet(x, t, encoder_hidden_states=ctx, cross_attention_kwargs={ROWS_KEY: rows}).sample
            masked = {n: v.clone() for n, v in cap.lse.items()}
            _run(unet, x, t, ctx)
    assert torch.equal(out, ref)
    assert len(seen) == 12 and all(c == [-1, 4] for _, c, _ in seen[:6]) and all(c is None for _, c, _ in seen[6:])
    assert cap.rows is None  # the last call said nothing about its rows
    assert all((masked[n] < cap.lse[n]).all() for n in masked)  # 3 of 77 positions: a smaller log-sum-exp


def test_reentering_an_active_capture_is_refused(pipe):
    cap = AttentionCapture(pipe.unet, "reference")
    with cap:
        with pytest.raises(RuntimeError):
            cap.__enter__()
    assert not any(isinstance(p, LSECaptureProcessor) for p in pipe.unet.attn_processors.values())


def test_nested_captures_both_see_values(pipe, unet_inputs):
    unet = pipe.unet
    before = _procs(unet)
    x, t, ctx = unet_inputs
    with torch.no_grad():
        ref = _run(unet, x, t, ctx)
        with AttentionCapture(unet, "reference") as outer:
            with AttentionCapture(unet, "all_cross") as inner:
                out = _run(unet, x, t, ctx)
            assert torch.equal(out, ref)
            assert set(outer.lse) == set(outer.layer_names) and len(outer.lse) == 6
            assert len(inner.lse) == len(cross_attention_layers(unet))
            for name in outer.layer_names:  # the shared layers were seen identically by both
                assert torch.equal(outer.lse[name], inner.lse[name])
            # after the inner capture exits, the outer one still records, the inner one no longer does
            inner_snapshot = {k: v.clone() for k, v in inner.lse.items()}
            outer.clear()
            _run(unet, x * 0.5, t, ctx)
            assert set(outer.lse) == set(outer.layer_names)
            assert not torch.equal(outer.lse[outer.layer_names[0]], inner_snapshot[outer.layer_names[0]])
            assert all(torch.equal(inner.lse[k], v) for k, v in inner_snapshot.items())
        assert torch.equal(_run(unet, x, t, ctx), ref)
    after = _procs(unet)
    assert all(after[k] is before[k] for k in before)


# ----------------------------------------------------------------------------- values

def _attn2_inputs(unet, names, x, t, ctx):
    "The hidden states and context each named attn2 module receives (forward pre-hooks, no processor involved)."
    mods = dict(unet.named_modules())
    seen, hooks = {}, []
    def make(name):
        def hook(mod, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            enc = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            seen[name] = (hs.detach().clone(), enc.detach().clone())
        return hook
    for n in names: hooks.append(mods[n].register_forward_pre_hook(make(n), with_kwargs=True))
    try:
        with torch.no_grad(): _run(unet, x, t, ctx)
    finally:
        for h in hooks: h.remove()
    return seen, mods


def test_lse_equals_direct_computation(pipe, unet_inputs):
    unet = pipe.unet
    layers = select_layers(unet, "all_cross")
    names = [l.name for l in layers]
    seen, mods = _attn2_inputs(unet, names, *unet_inputs)
    with torch.no_grad(), AttentionCapture(unet, "all_cross", probs=True) as cap:
        _run(unet, *unet_inputs)
    for l in layers:
        attn = mods[l.name]
        hs, enc = seen[l.name]
        with torch.no_grad():
            q, k = attn.to_q(hs), attn.to_k(enc)  # [b, pixels, heads*d], [b, tokens, heads*d]
        b, P, inner = q.shape
        h = l.heads; d = inner // h
        assert d == l.head_dim
        q = q.view(b, P, h, d).permute(0, 2, 1, 3)
        k = k.view(b, -1, h, d).permute(0, 2, 1, 3)
        logits = q @ k.transpose(-1, -2) / d ** 0.5  # [b, heads, pixels, tokens]
        lse = torch.logsumexp(logits, dim=-1)
        got = cap.lse[l.name]
        assert got.shape == (b, h, P) == lse.shape
        assert torch.allclose(got, lse, atol=1e-5, rtol=0), (l.name, (got - lse).abs().max())
        probs = cap.probs[l.name]
        assert probs.shape == (b, h, P, 77)
        assert torch.allclose(probs, torch.exp(logits - lse[..., None]), atol=1e-5)
    # layer_means is the per-sample mean over heads and pixels, in layer order
    lm = cap.layer_means()
    expect = torch.stack([cap.lse[n].mean(dim=(1, 2)) for n in names], 1)
    assert torch.allclose(lm, expect, atol=1e-6)


def test_probs_sum_to_one_over_tokens(pipe, unet_inputs):
    with torch.no_grad(), AttentionCapture(pipe.unet, "reference", probs=True) as cap:
        _run(pipe.unet, *unet_inputs)
    assert set(cap.probs) == set(cap.layer_names)
    for name, p in cap.probs.items():
        assert (p >= 0).all()
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5), name


def test_no_probs_unless_asked(pipe, unet_inputs):
    with torch.no_grad(), AttentionCapture(pipe.unet, "reference") as cap:
        _run(pipe.unet, *unet_inputs)
    assert cap.probs == {}


def test_captured_values_depend_on_each_sample_only(pipe, unet_inputs):
    "The LSE of sample 0 is the same whether it runs alone or in a batch of 2."
    x, t, ctx = unet_inputs
    with torch.no_grad():
        with AttentionCapture(pipe.unet, "reference") as both: _run(pipe.unet, x, t, ctx)
        with AttentionCapture(pipe.unet, "reference") as one: _run(pipe.unet, x[:1], t[:1], ctx[:1])
    assert torch.allclose(both.layer_means()[:1], one.layer_means(), atol=1e-5)
    assert not torch.allclose(both.layer_means()[0], both.layer_means()[1], atol=1e-6)


@pytest.mark.parametrize("hw", [(8, 8), (10, 12)])
def test_lse_map_shapes(pipe, hw):
    x = torch.randn(1, 4, *hw)
    ctx = torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad(), AttentionCapture(pipe.unet, "all_cross") as cap:
        pipe.unet(x, 500, encoder_hidden_states=ctx)
    assert cap.latent_hw == hw
    for l in cap.layers:
        m = cap.lse_map(l)
        gh, gw = l.grid(hw)
        assert m.shape == (1, l.heads, gh, gw)
        assert torch.equal(m.flatten(-2), cap.lse[l.name])
        assert torch.equal(cap.lse_map(l.short), m) and torch.equal(cap.lse_map(l.name), m)


def test_layer_means_before_any_call_raises(pipe):
    with AttentionCapture(pipe.unet, "reference") as cap:
        with pytest.raises(RuntimeError):
            cap.layer_means()


# ----------------------------------------------------------------------------- gradients and LoRA

def test_lse_keeps_graph_when_grad_enabled(fresh_pipe, unet_inputs):
    unet = fresh_pipe.unet
    with torch.enable_grad(), AttentionCapture(unet, "reference") as cap:
        _run(unet, *unet_inputs)
    assert cap.layer_means().requires_grad
    with torch.no_grad(), AttentionCapture(unet, "reference") as cap2:
        _run(unet, *unet_inputs)
    assert not cap2.layer_means().requires_grad


def test_capture_with_peft_lora(lora_pipe, unet_inputs):
    fresh_pipe, lora = lora_pipe
    unet = fresh_pipe.unet
    assert lora and all(p.requires_grad for p in lora.values())
    assert not any(p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n)
    x, t, ctx = unet_inputs
    before = _procs(unet)

    # lora_B = 0 at init: the adapter is a no-op, and the capture still leaves the output unchanged
    with torch.no_grad():
        ref = _run(unet, x, t, ctx)
        with AttentionCapture(unet, "reference") as cap0:
            out = _run(unet, x, t, ctx)
    assert torch.equal(out, ref)
    lse0 = cap0.layer_means().clone()

    # gradients of the captured LSE reach the LoRA parameters of the captured layers' to_q and to_k
    with torch.enable_grad(), AttentionCapture(unet, "reference") as cap:
        _run(unet, x, t, ctx)
        cap.layer_means().sum().backward()
    for name in cap.layer_names:
        for proj in ("to_q", "to_k"):
            key = [n for n in lora if n.startswith(f"{name}.{proj}.lora_B")]
            assert len(key) == 1, (name, proj)
            grad = lora[key[0]].grad
            assert grad is not None and grad.abs().sum() > 0, key[0]
    # to_v does not enter the logits: the last cross-attention layer's value path feeds no captured LSE
    last = cap.layer_names[-1]
    assert last == cross_attention_layers(unet)[-1].name
    key = [n for n in lora if n.startswith(f"{last}.to_v.lora_B")][0]
    assert lora[key].grad is None or lora[key].grad.abs().sum() == 0

    # nonzero lora_B changes what the capture reads
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in lora.items():
            if "lora_B" in n: p.copy_(0.5 * torch.randn(p.shape, generator=g))
        with AttentionCapture(unet, "reference") as cap1:
            _run(unet, x, t, ctx)
    assert (cap1.layer_means() - lse0).abs().max() > 1e-3
    after = _procs(unet)
    assert all(after[k] is before[k] for k in before)


# ----------------------------------------------------------------------------- the fused kernel

@pytest.fixture
def fused_spy(monkeypatch):
    "Fresh failure / check caches, and a count of the calls in which `fused_attention` gave (output, LSE)."
    monkeypatch.setattr(attention, "_FUSED_FAILED", {})
    monkeypatch.setattr(attention, "_FUSED_CHECKED", set())
    real, n = attention.fused_attention, {"asked": 0, "fused": 0}
    def spy(*a, **k):
        got = real(*a, **k)
        n["asked"] += 1; n["fused"] += got is not None
        return got
    monkeypatch.setattr(attention, "fused_attention", spy)
    return n


def _capture(unet, x, t, ctx, rows=None, **kw):
    "One UNet call inside a capture of all cross-attention layers: (output, {layer: LSE}, {layer: probs})."
    with AttentionCapture(unet, "all_cross", **kw) as cap:
        out = unet(x, t, encoder_hidden_states=ctx, cross_attention_kwargs=None if rows is None else {ROWS_KEY: rows}).sample
    return out, dict(cap.lse), dict(cap.probs)


def _max_diff(a, b): return max((a[n] - b[n]).abs().max().item() for n in a)


def test_fused_attention_matches_sdpa_and_explicit_lse():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, n, 64, generator=g) for n in (100, 77, 77))
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # the processor's layout: a [b, pixels, heads, d] view
    out, lse = fused_attention(q, k, v)
    assert out.shape == (2, 5, 100, 64) and out.dtype == torch.float32
    assert lse.shape == (2, 5, 100) and lse.dtype == torch.float32
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    explicit = (q @ k.transpose(-1, -2) / 8).logsumexp(-1)
    assert (lse - explicit).abs().max() < 1e-5
    # an explicit scale is the logits' scale
    _, lse2 = fused_attention(q, k, v, scale=0.3)
    assert (lse2 - (0.3 * q @ k.transpose(-1, -2)).logsumexp(-1)).abs().max() < 1e-5
    # no fused kernel for fp64, or where stock SDPA would use its math backend: None, the caller keeps the explicit path
    assert fused_attention(q.double(), k.double(), v.double()) is None
    from torch.nn.attention import sdpa_kernel, SDPBackend
    with sdpa_kernel([SDPBackend.MATH]):
        assert fused_attention(q, k, v) is None


def test_fused_lse_carries_no_gradient():
    "The claim behind the gradient condition: the kernel's LSE is not differentiable (its output is)."
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g).requires_grad_() for n in (16, 7, 7))
    out, lse = fused_attention(q, k, v)
    assert out.requires_grad and not lse.requires_grad and lse.grad_fn is None


@pytest.mark.parametrize("probs", [False, True])
def test_fused_and_explicit_agree_on_unet(pipe, unet_inputs, fused_spy, probs):
    unet = pipe.unet
    with torch.no_grad():
        stock = _run(unet, *unet_inputs)
        out_f, lse_f, p_f = _capture(unet, *unet_inputs, probs=probs)
        assert fused_spy["fused"] == len(lse_f) == len(cross_attention_layers(unet))  # every layer took the kernel
        out_e, lse_e, p_e = _capture(unet, *unet_inputs, probs=probs, fused=False)
        assert fused_spy["asked"] == len(lse_f)  # fused=False never asks for the kernel
    assert torch.equal(out_f, stock) and torch.equal(out_e, stock)
    assert lse_f.keys() == lse_e.keys()
    assert _max_diff(lse_f, lse_e) < 1e-5
    assert _max_diff(lse_f, lse_e) > 0  # two computations indeed (the kernel's online softmax is not the explicit sum)
    if probs:  # probabilities from explicit logits either way; the LSE is still the kernel's: a trace moves no score
        assert all(torch.equal(p_f[n], p_e[n]) for n in p_e)
        with torch.no_grad(): _, lse_nf, _ = _capture(unet, *unet_inputs)
        assert all(torch.equal(lse_f[n], lse_nf[n]) for n in lse_f)


def test_fused_bf16(fresh_pipe, unet_inputs, fused_spy):
    unet = fresh_pipe.unet.to(torch.bfloat16)
    x, t, ctx = unet_inputs
    x, ctx = x.bfloat16(), ctx.bfloat16()
    with torch.no_grad():
        stock = _run(unet, x, t, ctx)
        out_f, lse_f, _ = _capture(unet, x, t, ctx)
        out_e, lse_e, _ = _capture(unet, x, t, ctx, fused=False)
    assert fused_spy["fused"] == len(lse_f)
    assert torch.equal(out_f, stock) and torch.equal(out_e, stock)
    assert all(v.dtype == torch.float32 for v in lse_f.values())
    # both take the same bf16 q, k; the kernel accumulates in its own order (measured: 2.4e-5 on LSEs of about 5)
    assert _max_diff(lse_f, lse_e) < 2e-4


@pytest.mark.parametrize("error", [RuntimeError, NotImplementedError, TypeError, AttributeError])
def test_fallback_when_the_fused_op_fails(pipe, unet_inputs, fused_spy, monkeypatch, error):
    "A failing op (or a missing one: AttributeError) gives exactly the explicit path's results, and is not tried again."
    calls = []
    def broken(*a, **k):
        calls.append(1)
        raise error("no such kernel here")
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", broken)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="using explicit logits"):
            out_f, lse_f, _ = _capture(pipe.unet, *unet_inputs)
        out_f2, lse_f2, _ = _capture(pipe.unet, *unet_inputs)
        out_e, lse_e, _ = _capture(pipe.unet, *unet_inputs, fused=False)
    assert len(calls) == 1  # remembered per (device type, dtype, backend)
    assert fused_spy["fused"] == 0 and fused_spy["asked"] == 2 * len(lse_f)
    assert torch.equal(out_f, out_e) and torch.equal(out_f2, out_e)
    assert all(torch.equal(lse_f[n], lse_e[n]) and torch.equal(lse_f2[n], lse_e[n]) for n in lse_e)


def test_fallback_when_the_kernel_lse_is_wrong(pipe, unet_inputs, fused_spy, monkeypatch):
    "The first LSE of each (device type, dtype, backend) is checked against an explicit one: a wrong kernel is not used."
    real = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu",
                        lambda *a, **k: (lambda o: (o[0], o[1] / 1.4427))(real(*a, **k)))  # a log2-based LSE, say
    with torch.no_grad():
        with pytest.warns(UserWarning, match="differs from the explicit"):
            out_f, lse_f, _ = _capture(pipe.unet, *unet_inputs)
        out_e, lse_e, _ = _capture(pipe.unet, *unet_inputs, fused=False)
    assert fused_spy["fused"] == 0
    assert torch.equal(out_f, out_e) and all(torch.equal(lse_f[n], lse_e[n]) for n in lse_e)


def test_key_mask_takes_the_explicit_path(pipe, unet_inputs, fused_spy):
    x, t, ctx = unet_inputs
    km = torch.zeros(2, 77, dtype=torch.bool); km[:, :4] = True
    with torch.no_grad():
        stock = _run(pipe.unet, x, t, ctx)
        out, lse, _ = _capture(pipe.unet, x, t, ctx, rows=Rows(key_mask=km))
        assert fused_spy["asked"] == 0
        _, lse_e, _ = _capture(pipe.unet, x, t, ctx, rows=Rows(key_mask=km), fused=False)
        _, lse_all, _ = _capture(pipe.unet, x, t, ctx)
    assert torch.equal(out, stock)
    assert all(torch.equal(lse[n], lse_e[n]) for n in lse)  # the very explicit computation
    assert all((lse[n] < lse_all[n]).all() for n in lse)    # over 4 of 77 positions


def test_gradient_through_lse_takes_the_explicit_path(fresh_pipe, unet_inputs, fused_spy):
    unet = fresh_pipe.unet
    x, t, ctx = unet_inputs
    mods = dict(unet.named_modules())
    with torch.enable_grad(), AttentionCapture(unet, "reference") as cap:
        _run(unet, x, t, ctx)
        assert fused_spy["asked"] == 0
        cap.layer_means().sum().backward()
    for name in cap.layer_names:
        grad = mods[name].to_k.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    # with gradients enabled but nothing requiring them in q or k, the kernel is used (and its LSE is the same)
    unet.requires_grad_(False)
    with torch.enable_grad(), AttentionCapture(unet, "reference") as cap2:
        _run(unet, x, t, ctx)
    assert fused_spy["fused"] == 6
    assert max((cap2.lse[n] - cap.lse[n].detach()).abs().max().item() for n in cap.layer_names) < 1e-5


def test_nondefault_scale_takes_the_explicit_path(fresh_pipe, unet_inputs, fused_spy):
    "Stock SDPA ignores attn.scale (diffusers' TODO): the kernel is used only where attn.scale is SDPA's default."
    unet = fresh_pipe.unet
    layer = select_layers(unet, "all_cross")[0]
    unet.get_submodule(layer.name).scale = 0.5
    with torch.no_grad():
        stock = _run(unet, *unet_inputs)
        out, lse, _ = _capture(unet, *unet_inputs)
        _, lse_e, _ = _capture(unet, *unet_inputs, fused=False)
    assert torch.equal(out, stock)
    assert fused_spy["fused"] == fused_spy["asked"] == len(lse) - 1
    assert torch.equal(lse[layer.name], lse_e[layer.name])


@pytest.mark.parametrize("outer,inner", [(True, True), (True, False), (False, True)])
def test_shared_layers_fused_only_if_both_captures_are(pipe, outer, inner):
    unet = pipe.unet
    with AttentionCapture(unet, "all_cross", fused=outer) as o, AttentionCapture(unet, "reference", fused=inner) as i:
        procs = {k[:-len(".processor")]: p for k, p in unet.attn_processors.items() if isinstance(p, LSECaptureProcessor)}
        assert len(procs) == len(o.layers)
        for name, p in procs.items():
            assert p.fused == (outer and inner if name in i.layer_names else outer), name


# ----------------------------------------------------------------------------- layer selection

SD21_REFERENCE = ["down_blocks.2.attentions.0.transformer_blocks.0.attn2",
                  "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
                  "mid_block.attentions.0.transformer_blocks.0.attn2",
                  "up_blocks.3.attentions.0.transformer_blocks.0.attn2",
                  "up_blocks.3.attentions.1.transformer_blocks.0.attn2",
                  "up_blocks.3.attentions.2.transformer_blocks.0.attn2"]


def test_reference_preset_on_sd21_unet_meta():
    unet = sd21_unet(device="meta")
    layers = select_layers(unet, "reference")
    assert [l.name for l in layers] == SD21_REFERENCE
    # heads and query grids of the table in section 2.9 (latent 64x64 for 512 px)
    assert [l.heads for l in layers] == [20, 20, 20, 5, 5, 5]
    assert [l.grid((64, 64)) for l in layers] == [(16, 16)] * 2 + [(8, 8)] + [(64, 64)] * 3
    assert len(select_layers(unet, "all_cross")) == 16


def test_reference_preset_on_sd15_shaped_unet_meta():
    accelerate = pytest.importorskip("accelerate")
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                                    cross_attention_dim=768)
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    names = [l.name for l in select_layers(unet, "reference")]
    assert names == SD21_REFERENCE  # down_blocks.2 (2 layers), mid, up_blocks.3 (3 layers)
    assert sum(n.startswith("down_blocks.2.") for n in names) == 2
    assert sum(n.startswith("up_blocks.3.") for n in names) == 3
    assert [l.heads for l in select_layers(unet, "reference")] == [8] * 6
    assert len(select_layers(unet, "all_cross")) == 16


def test_reference_preset_on_tiny_pipeline(pipe):
    names = [l.name for l in select_layers(pipe.unet, "reference")]
    assert names == ["down_blocks.1.attentions.0.transformer_blocks.0.attn2",
                     "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
                     "mid_block.attentions.0.transformer_blocks.0.attn2",
                     "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
                     "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
                     "up_blocks.2.attentions.2.transformer_blocks.0.attn2"]


def test_cross_attention_layers_match_unet(pipe):
    layers = cross_attention_layers(pipe.unet)
    procs = [k for k in pipe.unet.attn_processors if k.endswith("attn2.processor")]
    assert sorted(l.processor_key for l in layers) == sorted(procs)
    mods = dict(pipe.unet.named_modules())
    for l in layers:
        assert isinstance(l, CrossAttnLayer)
        assert mods[l.name].is_cross_attention and mods[l.name].heads == l.heads


def test_select_layers_by_name_short_name_and_object(pipe):
    unet = pipe.unet
    all_ = select_layers(unet, "all_cross")
    mid = [l for l in all_ if l.place == "mid"][0]
    assert select_layers(unet, ["mid.a0"]) == [mid]
    assert select_layers(unet, mid.name) == [mid]
    assert select_layers(unet, [mid.processor_key]) == [mid]
    assert select_layers(unet, [mid, "mid.a0"]) == [mid]  # duplicates collapse
    with pytest.raises(DSDInputError, match="nosuchlayer"):
        select_layers(unet, ["nosuchlayer"])
    with pytest.raises(DSDInputError):
        select_layers(unet, [])
