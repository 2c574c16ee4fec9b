"""Few-shot prompt learning (dsd_nb.examples, dsd_nb.trainables, dsd_nb.prompt_learning): LoRA set-up, shared draws, losses, training, resume,
checkpoints (ours and the reference's), adapter switching, data-parallel training and the `dsd-train` command."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dsd_nb.core import DSDInputError
from dsd_nb.models import tiny_pipeline, quiet_libraries
from dsd_nb.scoring import DSDScorer
from dsd_nb.evaluate import RankingExample, scene_ranking_examples, example_generator
from dsd_nb.examples import few_shot
from dsd_nb.trainables import (lora_config, add_lora, lora_parameters, use_adapter, save_adapter, reference_lora_shapes, read_reference_lora,
                               load_reference_lora, add_soft_prompt, soft_prompt, remove_soft_prompt, save_soft_prompt, load_soft_prompt)
from dsd_nb.prompt_learning import ranking_scores, ranking_loss, PromptConfig, train_prompt, batch_indices, evaluate_ranking
from dsd_nb.scoring import encode_captions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shots():
    return scene_ranking_examples("fewshot", 4, direction="i2t")


def _perturb(pipe, name, std=0.05, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(pipe.unet, name): p.copy_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- adapters

def test_lora_targets_all_vs_cross(fresh_pipe):
    n_all = add_lora(fresh_pipe, "all", layers="all")
    n_cross = add_lora(fresh_pipe, "cross", layers="cross")
    names_all = [n for n, _ in fresh_pipe.unet.named_parameters() if ".all." in n]
    names_cross = [n for n, _ in fresh_pipe.unet.named_parameters() if ".cross." in n]
    assert all(".attn2." in n for n in names_cross) and any(".attn1." in n for n in names_all)
    assert len(names_all) == 2 * len(names_cross) == 22 * 4 * 2
    assert 0 < n_cross < n_all
    # only adapter weights train; everything else is frozen
    trainable = [n for n, p in fresh_pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert not any(p.requires_grad for m in (fresh_pipe.vae, fresh_pipe.text_encoder) for p in m.parameters())


def test_lora_init_is_seeded_and_identity(fresh_pipe):
    other = tiny_pipeline(seed=0)
    add_lora(fresh_pipe, "a", seed=3); add_lora(other, "a", seed=3)
    for p, q in zip(lora_parameters(fresh_pipe.unet, "a"), lora_parameters(other.unet, "a")): assert torch.equal(p, q)
    b = [p for n, p in fresh_pipe.unet.named_parameters() if "lora_B" in n]
    a = [p for n, p in fresh_pipe.unet.named_parameters() if "lora_A" in n]
    assert all((p == 0).all() for p in b)                       # up projections start at zero: no change
    r = 4; std = torch.cat([p.flatten() for p in a]).std().item()
    assert abs(std - 1 / r) < 0.05                               # gaussian init, std 1/rank (the reference)


def test_bad_lora_settings(fresh_pipe):
    with pytest.raises(DSDInputError, match="rank"): lora_config(rank=0)
    with pytest.raises(DSDInputError, match="'all' or 'cross'"): lora_config(layers="self")
    add_lora(fresh_pipe, "x")
    with pytest.raises(DSDInputError, match="already has an adapter"): add_lora(fresh_pipe, "x")
    with pytest.raises(DSDInputError, match="no adapter named"): use_adapter(fresh_pipe, "y")


def test_switching_adapters_changes_scores(fresh_pipe, shots):
    img, caps = shots[0].images, shots[0].captions
    for m in (fresh_pipe.unet, fresh_pipe.vae, fresh_pipe.text_encoder): m.requires_grad_(False)  # as add_lora leaves them: frozen
    base = DSDScorer(fresh_pipe, steps=3).score(img, caps)  # weights may take other CPU kernels, so compare frozen with frozen
    add_lora(fresh_pipe, "a"); _perturb(fresh_pipe, "a", seed=1)
    add_lora(fresh_pipe, "b"); _perturb(fresh_pipe, "b", seed=2)
    use_adapter(fresh_pipe, "a"); sa = DSDScorer(fresh_pipe, steps=3).score(img, caps)
    use_adapter(fresh_pipe, "b"); sb = DSDScorer(fresh_pipe, steps=3).score(img, caps)
    use_adapter(fresh_pipe, None); s0 = DSDScorer(fresh_pipe, steps=3).score(img, caps)
    use_adapter(fresh_pipe, "a"); sa2 = DSDScorer(fresh_pipe, steps=3).score(img, caps)
    assert torch.equal(s0, base) and torch.equal(sa, sa2)
    assert not torch.allclose(sa, base) and not torch.allclose(sa, sb)


# ----------------------------------------------------------------------------- examples, draws, losses

def test_examples_and_few_shot():
    ex = scene_ranking_examples("fewshot", 3, direction="t2i")
    assert all(e.direction == "t2i" and len(e.captions) == 1 and len(e.images) == e.n_candidates for e in ex)
    assert all(len(e.kinds) == e.n_candidates - 1 for e in ex)
    pool = scene_ranking_examples("fewshot", 10)
    a, b, c = few_shot(pool, 4, seed=0), few_shot(pool, 4, seed=0), few_shot(pool, 4, seed=1)
    assert [e.captions for e in a] == [e.captions for e in b] and [e.captions for e in a] != [e.captions for e in c]
    with pytest.raises(DSDInputError, match="shots"): few_shot(pool, 0)
    with pytest.raises(DSDInputError, match="fraction"): few_shot(pool, 1.5)
    with pytest.raises(DSDInputError, match="direction"): scene_ranking_examples("fewshot", 1, direction="x")
    with pytest.raises(DSDInputError, match="needs 1 image"): RankingExample(ex[0].images, ["a", "b"])


def test_draw_is_shared_by_candidates(pipe, shots):
    "Identical candidates under one shared (timestep, noise) draw get identical scores (the reference's draws differ)."
    e = shots[0]
    twin = RankingExample(e.images, [e.captions[0], e.captions[0], e.captions[1]])
    s = ranking_scores(DSDScorer(pipe), [twin], [example_generator(0, 0, 0)], draws=2)[0]
    assert s[0] == s[1] and s[0] != s[2]
    assert torch.isclose(ranking_loss([s], margin=0.1)[0], torch.tensor(0.1) + torch.relu(s[2] - s[0]))
    timg = RankingExample([e.images[0], e.images[0]], [e.captions[0]])
    s = ranking_scores(DSDScorer(pipe), [timg], [example_generator(0, 0, 0)])[0]
    assert s[0] == s[1]


@pytest.mark.parametrize("mode", ["dsd", "attention", "diffusion_itm"])
def test_ranking_scores_independent_of_batch_and_chunks(pipe, mode):
    ex = scene_ranking_examples("fewshot", 2, direction="both")
    gens = lambda: [example_generator(5, 3, i) for i in range(len(ex))]
    a = ranking_scores(DSDScorer(pipe, mode=mode, chunk_size=1), ex, gens(), draws=2)
    b = ranking_scores(DSDScorer(pipe, mode=mode, chunk_size=64), ex, gens(), draws=2)
    c = [ranking_scores(DSDScorer(pipe, mode=mode), [e], [example_generator(5, 3, i)], draws=2)[0] for i, e in enumerate(ex)]
    for x, y, z in zip(a, b, c):
        assert x.shape == (len(y),) and torch.allclose(x, y, atol=1e-5) and torch.allclose(x, z, atol=1e-5)


def test_draws_depend_on_seed_step_and_index():
    t = lambda s, k, i: torch.randint(0, 1000, (4,), generator=example_generator(s, k, i)).tolist()
    assert t(0, 0, 0) == t(0, 0, 0)
    assert len({str(t(0, 0, 0)), str(t(1, 0, 0)), str(t(0, 1, 0)), str(t(0, 0, 1))}) == 4


def test_losses():
    s = [torch.tensor([1.0, 0.2, 0.95]), torch.tensor([0.0, 0.5])]
    assert torch.allclose(ranking_loss(s), torch.tensor([0.05, 0.6]))
    assert torch.allclose(ranking_loss(s, margin=0.0), torch.tensor([0.0, 0.5]))
    ce = ranking_loss(s, "ce")
    assert torch.allclose(ce, torch.stack([-torch.log_softmax(x, 0)[0] for x in s]))
    with pytest.raises(DSDInputError, match="hinge"): ranking_loss(s, "mse")


def test_batch_indices_cover_each_epoch():
    for step in range(3):
        assert sorted(sum((batch_indices(12, 4, 3 * step + j, 0) for j in range(3)), [])) == list(range(12))


# ----------------------------------------------------------------------------- training and checkpoints

CFG = dict(train_steps=6, batch_size=2, lr=1e-2, ckpt_every=2, val_every=3, val_draws=1, chunk_size=32)


def test_training_lowers_the_training_loss(shots):
    p = tiny_pipeline(seed=0)
    sc = DSDScorer(p, seed=0)
    add_lora(p, "probe")  # an identity adapter, to measure the base model with the same code path
    before = evaluate_ranking(sc, shots, draws=2)["loss"]
    q = tiny_pipeline(seed=0)
    train_prompt(q, shots, config=PromptConfig(**{**CFG, "train_steps": 12, "lr": 2e-2}), progress=False)
    after = evaluate_ranking(DSDScorer(q, seed=0), shots, draws=2)["loss"]
    assert after < before, (before, after)


def test_few_shot_improves_held_out_ranking_on_the_default_model():
    """A fixed tiny setting on the shipped model: 32 t2i shots with relation negatives only (few-shot split), 30 steps
    of LoRA (lr 3e-3, batch 8). On 48 held-out relation examples (validation split) the mean hinge loss must fall by at
    least 20% (measured on the shipped model: 0.102 -> 0.059 with seed 0 and -> 0.076 with seed 1, i.e. 42% and 26%; held-out
    accuracy 56% -> 77% and 65%); the training loss halves (0.107 -> 0.050)."""
    from dsd_nb.models import load_pipeline
    train = scene_ranking_examples("fewshot", 32, seed=0, direction="t2i", kinds=("relation",))
    held = scene_ranking_examples("val", 48, seed=0, direction="t2i", kinds=("relation",))
    pipe = load_pipeline()
    sc = DSDScorer(pipe, seed=0)
    b_train, b_held = evaluate_ranking(sc, train, draws=4), evaluate_ranking(sc, held, draws=4)
    train_prompt(pipe, train, config=PromptConfig(train_steps=30, batch_size=8, lr=3e-3, seed=0, val_every=10**6, ckpt_every=10**6), progress=False)
    sc = DSDScorer(pipe, seed=0)
    a_train, a_held = evaluate_ranking(sc, train, draws=4), evaluate_ranking(sc, held, draws=4)
    assert a_train["loss"] < 0.7 * b_train["loss"], (b_train, a_train)
    assert a_held["loss"] < 0.8 * b_held["loss"], (b_held, a_held)


def test_evaluate_ranking_on_the_timestep_grid(pipe):
    ex = scene_ranking_examples("fewshot", 2, seed=0, direction="both")
    sc = DSDScorer(pipe, seed=0, steps=3)
    r = evaluate_ranking(sc, ex, grid=True)
    # by hand: the scorer's own [N, M] scores, positive first
    s = [sc.score(e.images[0], e.captions)[0] if e.direction == "i2t" else sc.score(e.images, e.captions[0])[:, 0] for e in ex]
    assert r["accuracy"] == sum(bool((x[0] > x[1:]).all()) for x in s) / len(s)
    kinds = {k for e in ex for k in e.kinds}
    per = {k: [bool(x[0] > x[j + 1]) for e, x in zip(ex, s) for j, kk in enumerate(e.kinds) if kk == k] for k in kinds}
    assert abs(r["pairwise"] - sum(sum(v) / len(v) for v in per.values()) / len(per)) < 1e-9
    assert r == evaluate_ranking(sc, ex, grid=True)                  # deterministic
    with pytest.raises(DSDInputError, match="val_steps"): train_prompt(tiny_pipeline(seed=0), ex, ex, config=PromptConfig(val_steps=0), progress=False)


def test_keep_best_selects_restores_and_resumes(tmp_path, shots):
    cfg = PromptConfig(**{**CFG, "train_steps": 6, "lr": 0.3, "val_every": 2, "keep_best": True, "ckpt_every": 1})
    p1 = tiny_pipeline(seed=0)
    log1 = train_prompt(p1, shots, shots, out=tmp_path / "a", config=cfg, progress=False)
    vals = log1.dropna(subset=["val_accuracy"])
    assert vals.step.tolist() == [0, 2, 4, 6]
    best = max(vals.itertuples(), key=lambda r: (r.val_pairwise, -r.val_loss))
    assert log1.attrs["selected_step"] == best.step
    assert json.loads((tmp_path / "a" / "done.json").read_text())["selected_step"] == best.step
    again = evaluate_ranking(DSDScorer(p1, seed=cfg.seed), shots, cfg.val_draws, cfg.seed)
    assert abs(again["loss"] - best.val_loss) < 1e-5          # the kept adapter is the one validated at that step
    # killed after step 3 and resumed: the same selection and the same final adapter
    train_prompt(tiny_pipeline(seed=0), shots, shots, out=tmp_path / "b", config=cfg, stop_after=3, progress=False)
    p2 = tiny_pipeline(seed=0)
    log2 = train_prompt(p2, shots, shots, out=tmp_path / "b", config=cfg, progress=False)
    assert log2.attrs["selected_step"] == best.step
    for a, b in zip(lora_parameters(p1.unet), lora_parameters(p2.unet)): assert torch.equal(a, b)
    with pytest.raises(DSDInputError, match="keep_best needs"):
        train_prompt(tiny_pipeline(seed=0), shots, config=cfg, progress=False)
    # the metrics file has the same column order with keep_best (whose first row, step 0, is validation only)
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].startswith("step,loss,train_acc,val_")


def test_resume_after_kill_equals_uninterrupted(tmp_path, shots):
    cfg = PromptConfig(**{**CFG, "grad_accum": 2})
    p1 = tiny_pipeline(seed=0)
    log1 = train_prompt(p1, shots, shots[:1], out=tmp_path / "a", config=cfg, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, shots[:1], out=tmp_path / "b", config=cfg, stop_after=3, progress=False)
    assert not (tmp_path / "b" / "done.json").exists() and (tmp_path / "b" / "checkpoints" / "last" / "trainer_state.pt").exists()
    p2 = tiny_pipeline(seed=0)
    log2 = train_prompt(p2, shots, shots[:1], out=tmp_path / "b", config=cfg, progress=False)
    for a, b in zip(lora_parameters(p1.unet), lora_parameters(p2.unet)): assert torch.equal(a, b)
    assert log1.loss.tolist() == log2.loss.tolist() and len(log2) == cfg.train_steps
    assert "val_accuracy" in log1.columns and log1.val_accuracy.notna().sum() == 2
    # the final adapter is in the diffusers layout and loads into a stock pipeline
    fresh = tiny_pipeline(seed=0)
    with quiet_libraries(): fresh.load_lora_weights(str(tmp_path / "a" / "adapter"), adapter_name="x")
    for a, b in zip(lora_parameters(p1.unet), lora_parameters(fresh.unet, "x")): assert torch.equal(a, b)
    metrics = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,loss,train_acc") and len(metrics) == cfg.train_steps + 1


def test_run_folder_protection(tmp_path, shots):
    cfg = PromptConfig(**{**CFG, "train_steps": 2})
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "r", config=cfg, progress=False)
    with pytest.raises(DSDInputError, match="finished run"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "r", config=cfg, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "r", config=cfg, overwrite=True, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "s", config=PromptConfig(**{**CFG, "train_steps": 4}), stop_after=1, progress=False)
    with pytest.raises(DSDInputError, match="other settings"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "s", config=PromptConfig(**{**CFG, "train_steps": 4, "lr": 1.0}), progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=cfg, stop_after=1, run_info=dict(shots="4"), progress=False)
    with pytest.raises(DSDInputError, match="other settings"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=cfg, run_info=dict(shots="8"), progress=False)
    assert (tmp_path / "u" / "metrics.csv").exists()  # written with every checkpoint, not only at the end
    with pytest.raises(DSDInputError, match="fp16"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "v", config=PromptConfig(mixed_precision="fp16"), progress=False)
    assert not (tmp_path / "v").exists()  # a refused run leaves no folder behind
    with pytest.raises(DSDInputError, match="multiple of grad_accum"):
        train_prompt(tiny_pipeline(seed=0), shots, config=PromptConfig(batch_size=3, grad_accum=2), progress=False)
    (tmp_path / "f").write_text("mine")
    for kw, msg in ((dict(out=tmp_path / "f"), "is a file"), (dict(max_minutes=-1), "max_minutes must be a number of minutes >= 0"),
                    (dict(max_minutes=float("nan")), "max_minutes must be"), (dict(stop_after=0), "stop_after must be a step from 1 on")):
        with pytest.raises(DSDInputError, match=msg): train_prompt(tiny_pipeline(seed=0), shots, config=cfg, progress=False, **kw)
    assert (tmp_path / "f").read_text() == "mine"
    with pytest.raises(DSDInputError, match="cannot make the run folder"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "f" / "sub", config=cfg, progress=False)
    # a user's own files in the folder are never replaced, not even with overwrite
    (tmp_path / "m").mkdir(); (tmp_path / "m" / "metrics.csv").write_text("epoch,mine\n")
    (tmp_path / "c").mkdir(); (tmp_path / "c" / "config.json").write_text('{"name": "my experiment"}')
    (tmp_path / "y").mkdir(); (tmp_path / "y" / "config.json").write_text("# my settings\nname: mine"); (tmp_path / "y" / "metrics.csv").write_text("mine")
    (tmp_path / "l").mkdir(); (tmp_path / "l" / "config.json").write_text("[1, 2]")
    (tmp_path / "k" / "config.json").mkdir(parents=True)
    for folder, msg in (("m", "but no run"), ("c", "not the settings of a dsd-train run"), ("y", "not the settings of a dsd-train run"),
                        ("l", "not the settings of a dsd-train run"), ("k", "not the settings of a dsd-train run")):
        for ow in (False, True):
            with pytest.raises(DSDInputError, match=msg):
                train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / folder, config=cfg, overwrite=ow, progress=False)
    assert (tmp_path / "m" / "metrics.csv").read_text() == "epoch,mine\n" and json.loads((tmp_path / "c" / "config.json").read_text()) == {"name": "my experiment"}
    assert (tmp_path / "y" / "config.json").read_text() == "# my settings\nname: mine" and (tmp_path / "y" / "metrics.csv").read_text() == "mine"
    # a done.json that is not a run's (someone's own file) is no finished run to replace: refused, with or without overwrite
    (tmp_path / "d" / "adapter").mkdir(parents=True); (tmp_path / "d" / "done.json").write_text("keep"); (tmp_path / "d" / "adapter" / "notes.txt").write_text("mine")
    for ow in (False, True):
        with pytest.raises(DSDInputError, match="not the record of a finished dsd-train run"):
            train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, overwrite=ow, progress=False)
    assert (tmp_path / "d" / "adapter" / "notes.txt").read_text() == "mine" and (tmp_path / "d" / "done.json").read_text() == "keep"
    # settings that wreck the weights: refused up front (lr > 1), or stopped when the loss or the weights stop being finite
    with pytest.raises(DSDInputError, match="lr must be at most 1"): PromptConfig(lr=1e39)
    with pytest.raises(DSDInputError, match="training diverged at step") as e:
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "nan", config=PromptConfig(**{**CFG, "train_steps": 3, "lr": 1.0, "weight_decay": 1e38}), progress=False)
    assert "alpha" not in str(e.value)  # alpha was not set: not advice to lower it
    assert not (tmp_path / "nan" / "done.json").exists() and not (tmp_path / "nan" / "adapter").exists()  # no broken adapter saved
    with pytest.raises(DSDInputError, match="val_steps .* at most 1000"): train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "w", config=PromptConfig(val_steps=1001), progress=False)
    assert not (tmp_path / "w").exists()  # refused before anything is written
    # temporary folders a killed run left behind are cleared when the run resumes; a run killed in the middle of
    # swapping its checkpoint folders (last renamed aside, the new one not yet in place) resumes from the old one
    ck = tmp_path / "u" / "checkpoints"
    log = json.loads((ck / "last" / "log.json").read_text()); log[0]["loss"] = 123.0  # a marker: seen only if this checkpoint is resumed
    (ck / "last" / "log.json").write_text(json.dumps(log))
    (ck / "last").rename(ck / ".last.k1ll3d.old")  # as atomic_folder names the folder it sets aside
    stale = ck / ".last.killed"; (stale / ".adapter.x").mkdir(parents=True)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=cfg, run_info=dict(shots="4"), progress=False)
    assert not stale.exists() and (tmp_path / "u" / "done.json").exists() and not list(ck.glob(".last.*"))
    m = pd.read_csv(tmp_path / "u" / "metrics.csv")
    assert m.step.tolist() == [1, 2] and m.loss[0] == 123.0  # resumed after step 1 from the set-aside checkpoint, not started over


def test_resume_needs_the_same_frozen_extras(tmp_path, shots):
    "A soft prompt under a LoRA run (or a LoRA under a soft-prompt run) shapes the scores: config.json records it, and a resume without it is refused."
    cfg = PromptConfig(**{**CFG, "train_steps": 4})
    p = tiny_pipeline(seed=0); add_soft_prompt(p, 2, init=torch.randn(2, p.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0)))
    train_prompt(p, shots, out=tmp_path / "l", config=cfg, stop_after=1, progress=False)
    frozen = json.loads((tmp_path / "l" / "config.json").read_text())["frozen"]
    assert frozen["soft_prompt"]["tokens"] == 2 and len(frozen["soft_prompt"]["values"]) == 16
    assert not soft_prompt(p).requires_grad  # it stayed frozen under the LoRA
    saved = load_file(tmp_path / "l" / "frozen" / "soft_prompt.safetensors")  # and the run folder holds it
    assert len(saved) == 1 and torch.equal(next(iter(saved.values())), soft_prompt(p).detach().cpu())
    with pytest.raises(DSDInputError, match="other frozen parts attached"):  # resumed on a bare pipeline: it used to continue silently
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "l", config=cfg, progress=False)
    q = tiny_pipeline(seed=0); load_soft_prompt(q, tmp_path / "l" / "frozen" / "soft_prompt.safetensors")
    train_prompt(q, shots, out=tmp_path / "l", config=cfg, progress=False)  # the same soft prompt, from the run folder: resumes
    assert (tmp_path / "l" / "done.json").exists()
    # replacing the finished run with another soft prompt attached replaces frozen/ too
    o = tiny_pipeline(seed=0); add_soft_prompt(o, 3, init=torch.randn(3, o.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1)))
    train_prompt(o, shots, out=tmp_path / "l", config=cfg, overwrite=True, stop_after=1, progress=False)
    assert torch.equal(next(iter(load_file(tmp_path / "l" / "frozen" / "soft_prompt.safetensors").values())), soft_prompt(o).detach().cpu())
    # a soft-prompt run records the active LoRA it trains under
    r = tiny_pipeline(seed=0); add_lora(r, "base", seed=3)
    sp = PromptConfig(**{**CFG, "train_steps": 2, "method": "soft_prompt", "soft_tokens": 2})
    train_prompt(r, shots, out=tmp_path / "s", config=sp, stop_after=1, progress=False)
    assert list(json.loads((tmp_path / "s" / "config.json").read_text())["frozen"]["unet_adapters"]) == ["base"]
    ad = load_file(tmp_path / "s" / "frozen" / "base" / "pytorch_lora_weights.safetensors")  # saved in the stock LoRA layout
    from peft.utils import get_peft_model_state_dict
    ref = get_peft_model_state_dict(r.unet, adapter_name="base")
    assert ref and {k[len("unet."):] for k in ad} == set(ref) and all(torch.equal(ad["unet." + k], v.cpu()) for k, v in ref.items())
    with pytest.raises(DSDInputError, match="other frozen parts attached"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "s", config=sp, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "b", config=PromptConfig(**{**CFG, "train_steps": 1}), progress=False)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["frozen"] == {}  # nothing else attached
    assert not (tmp_path / "b" / "frozen").exists()
    # the refusal names what to attach
    p2 = tiny_pipeline(seed=0); add_soft_prompt(p2, 2, init=soft_prompt(p).detach().clone())
    train_prompt(p2, shots, out=tmp_path / "m", config=cfg, stop_after=1, progress=False)
    with pytest.raises(DSDInputError, match=r"other settings \(frozen: \{'soft_prompt'.*\{\} now\).*other frozen parts attached.*saved in .*m/frozen.*load_soft_prompt"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "m", config=cfg, progress=False)
    (tmp_path / "f" / "frozen").mkdir(parents=True)  # someone's own folder named frozen: not a run, refused
    with pytest.raises(DSDInputError, match=r"checkpoints/, metrics.csv or frozen/\) but no run"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "f", config=cfg, progress=False)


def test_adapter_alpha_survives_stock_loading(tmp_path, fresh_pipe, shots):
    add_lora(fresh_pipe, "a", rank=2, alpha=8.0); _perturb(fresh_pipe, "a")
    save_adapter(fresh_pipe, tmp_path / "ad", "a")
    assert (tmp_path / "ad" / "pytorch_lora_weights.safetensors").exists()
    other = tiny_pipeline(seed=0)
    with quiet_libraries(): other.load_lora_weights(str(tmp_path / "ad"), adapter_name="a")
    assert other.unet.peft_config["a"].lora_alpha == 8.0 and other.unet.peft_config["a"].r == 2
    s1 = DSDScorer(fresh_pipe, steps=2).score(shots[0].images, shots[0].captions)
    s2 = DSDScorer(other, steps=2).score(shots[0].images, shots[0].captions)
    assert torch.equal(s1, s2)


# ----------------------------------------------------------------------------- reference checkpoints

def _reference_ckpt(unet, path, rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.05 for k, s in reference_lora_shapes(unet, rank).items()}
    torch.save(sd, path)
    return sd


def test_reference_checkpoint_acts_as_w_plus_up_down(tmp_path, fresh_pipe):
    sd = _reference_ckpt(fresh_pipe.unet, tmp_path / "pytorch_model.bin")
    n = load_reference_lora(fresh_pipe, tmp_path)  # a folder works too
    assert n == sum(v.numel() for v in sd.values())
    for key in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1", "up_blocks.1.attentions.0.transformer_blocks.0.attn2"):
        for proj, mod in (("to_q", "to_q"), ("to_v", "to_v"), ("to_out", "to_out.0")):
            lin = fresh_pipe.unet.get_submodule(f"{key}.{mod}")
            x = torch.randn(3, lin.in_features)
            d, u = sd[f"{key}.processor.{proj}_lora.down.weight"], sd[f"{key}.processor.{proj}_lora.up.weight"]
            assert torch.allclose(lin(x), lin.base_layer(x) + x @ d.T @ u.T, atol=1e-5)


def test_reference_checkpoint_mismatches_are_named(tmp_path, fresh_pipe):
    sd = _reference_ckpt(fresh_pipe.unet, tmp_path / "ok.bin")
    k0 = sorted(sd)[0]
    cases = {
        "missing 1 keys": {k: v for k, v in sd.items() if k != k0},
        "extra 1 keys": {**sd, "mid_block.attentions.9.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.zeros(4, 32)},
        "not reference LoRA keys": {**sd, "conv_in.weight": torch.zeros(1)},
        "ranks differ": {**sd, k0: torch.zeros(8, sd[k0].shape[1])},
        "shapes that do not fit": {**sd, k0: torch.zeros(sd[k0].shape[0], sd[k0].shape[1] + 1) if k0.endswith("down.weight") else torch.zeros(sd[k0].shape[0] + 1, sd[k0].shape[1])},
    }
    for msg, bad in cases.items():
        torch.save(bad, tmp_path / "bad.bin")
        with pytest.raises(DSDInputError, match=msg): read_reference_lora(tmp_path / "bad.bin", fresh_pipe.unet)
    with pytest.raises(DSDInputError, match="has rank 4"): read_reference_lora(tmp_path / "ok.bin", fresh_pipe.unet, rank=8)
    with pytest.raises(DSDInputError, match="not found"): read_reference_lora(tmp_path / "nope.bin", fresh_pipe.unet)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(DSDInputError, match="weights-only"): read_reference_lora(tmp_path / "junk.bin", fresh_pipe.unet)


def test_reference_checkpoint_refuses_pickled_code(tmp_path, fresh_pipe):
    class Evil:
        def __reduce__(self): return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(DSDInputError, match="weights-only"): read_reference_lora(tmp_path / "evil.bin", fresh_pipe.unet)
    assert not (tmp_path / "pwned").exists()


def test_reference_checkpoint_of_sd21_size():
    from dsd_nb.models import sd21_unet
    shapes = reference_lora_shapes(sd21_unet(device="meta"))
    assert len(shapes) == 256 and sum(a * b for a, b in shapes.values()) == 829_952
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"] == (4, 320)
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight"] == (4, 1024)


# ----------------------------------------------------------------------------- data parallel and the command

def _exe(name):
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else shutil.which(name)


@pytest.mark.xfail(strict=False, reason="on the fresh install of 2026-12-04 the unchanged code of b1f3078 also fails this: the 2-process "
                   "weights differ by 0.0038 for 0.009 of movement (0.1x allowed); accelerate 1.15/1.16 and transformers "
                   "5.24/5.25 give the same. It passed in CI on 2026-12-03: an environment change to find (see the stop note)")
def test_two_processes_train_like_one(tmp_path):
    "`accelerate launch` with 2 CPU processes gives the single-process run's losses and (up to float reduction order) weights."
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "tests" / "ddp_train_script.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([_exe("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                          script, str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world 2" in two.stdout and "world 1" in one.stdout
    a = load_file(tmp_path / "one" / "adapter" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    moved = max(v.abs().max().item() for k, v in a.items() if "lora_B" in k)
    assert moved > 3e-3  # training moved the up projections away from zero
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.1 * moved
    la = (tmp_path / "one" / "metrics.csv").read_text().splitlines()[1:]
    lb = (tmp_path / "two" / "metrics.csv").read_text().splitlines()[1:]
    for x, y in zip(la, lb):
        assert abs(float(x.split(",")[1]) - float(y.split(",")[1])) < 1e-5


def test_dsd_train_command(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [_exe("dsd-train"), "--out", str(tmp_path / "run"), "--model", "tiny-random", "--shots", "04", "--train_steps", "2",
            "--batch_size", "2", "--val_n", "2", "--val_every", "2", "--lr", "1e-3"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("finished: step 2"), r.stdout
    run = tmp_path / "run"
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").exists() and (run / "metrics.csv").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_steps"] == 2 and cfg["rank"] == 4 and cfg["margin"] == 0.1 and cfg["lr"] == 1e-3
    assert cfg["run"]["shots"] == "4"  # "04" and "4" are the same run
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2 and "finished run" in again.stderr and "Traceback" not in again.stderr
    for bad, msg in ((["--shots", "0"], "shots"), (["--loss", "mse"], "hinge"), (["--lora_layers", "self"], "--lora_layers must be one of all, cross"),
                     (["--batch_size", "3", "--grad_accum", "2"], "--batch_size (3) must be a multiple of grad_accum (2)"), (["--dataset", str(tmp_path / "no.csv")], ""),
                     (["--shots", "abc"], "--shots must be"), (["--val_n", "-3"], "--val_n"), (["--val_n", "100000"], "--val_n must be 0"),
                     (["--max_minutes", "-1"], "--max_minutes must be a number of minutes >= 0"),
                     (["--shots", "4_0"], "--shots must be a whole number"), (["--shots", "4.0"], "--shots must be a whole number"),
                     (["--shots", "100000000"], "--shots must be 1 to 20000"), (["--shots", "0"], "--shots must be 1 to 20000"), (["--images_dir", "imgs"], "--images_dir is the images folder of a ComVG CSV"),
                     (["--draws", "0"], "--draws must be a positive integer; got 0"), (["--rank", "0"], "--rank must be a positive integer"),
                     (["--rank", "100000"], "rank 100000 is more than this UNet allows"), (["--val_seeds", "-1"], "--val_seeds: seed must be"),
                     (["--direction", "sideways"], "invalid choice")):
        r = subprocess.run(args[:2] + [str(tmp_path / "other")] + args[3:] + bad, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 2 and "Traceback" not in r.stderr and msg in r.stderr, (bad, r.stderr[-1500:])
    (tmp_path / "file").write_text("mine")
    r = subprocess.run(args[:2] + [str(tmp_path / "file")] + args[3:], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert (tmp_path / "file").read_text() == "mine"


def test_dsd_train_soft_prompt_and_val_seeds(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [_exe("dsd-train"), "--out", str(tmp_path / "run"), "--model", "tiny-random", "--shots", "4", "--train_steps", "2",
            "--batch_size", "2", "--val_n", "2", "--val_every", "2", "--lr", "0.05", "--method", "soft_prompt", "--soft_tokens", "3",
            "--val_steps", "2", "--val_seeds", "5,6", "--keep_best"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "soft_prompt.safetensors").exists() and not (run / "adapter").exists()
    assert load_file(run / "soft_prompt.safetensors")["soft_prompt"].shape == (3, 32)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "soft_prompt" and cfg["val_seeds"] == [5, 6] and cfg["val_steps"] == 2
    for bad, msg in ((["--method", "prefix"], "method must be one of lora, soft_prompt"), (["--soft_tokens", "0"], "soft_tokens must be a positive integer"),
                     (["--val_seeds", "1,x"], "--val_seeds must be comma-separated integers"), (["--val_seeds", "1,1"], "repeats a seed"),
                     (["--val_n", "0"], "--val_seeds and val_steps shape the validation")):
        r = subprocess.run(args[:2] + [str(tmp_path / "other")] + args[3:] + bad, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 2 and "Traceback" not in r.stderr and msg in r.stderr, (bad, r.stderr[-1500:])


# ----------------------------------------------------------------------------- soft prompts

def test_soft_prompt_starts_as_a_no_op_and_changes_only_after_the_end_token():
    p = tiny_pipeline(seed=0)
    caps = ["a red circle", "a green star above a blue square"]
    E0 = encode_captions(p.tokenizer, p.text_encoder, caps)
    P = add_soft_prompt(p, 5)
    assert torch.equal(encode_captions(p.tokenizer, p.text_encoder, caps), E0)
    with torch.no_grad(): P.add_(torch.randn(P.shape, generator=torch.Generator().manual_seed(3)))
    E1 = encode_captions(p.tokenizer, p.text_encoder, caps)
    for i, c in enumerate(caps):
        n = len(p.tokenizer(c).input_ids)
        assert torch.equal(E1[i, :n], E0[i, :n])                      # causal: the caption itself is untouched
        assert (E1[i, n:n + 5] - E0[i, n:n + 5]).abs().amax(-1).min() > 1e-4   # each soft position changed
    assert not torch.equal(E1, E0)
    remove_soft_prompt(p)
    assert torch.equal(encode_captions(p.tokenizer, p.text_encoder, caps), E0) and soft_prompt(p) is None
    add_soft_prompt(p, 4)
    with pytest.warns(UserWarning, match="soft vectors past the last position are dropped") as w:
        encode_captions(p.tokenizer, p.text_encoder, [" ".join(["red"] * 73)])
    assert w[0].filename == __file__  # attributed to the caller, not to torch's or transformers' code


def test_soft_prompt_training_resumes_and_selects_like_lora(tmp_path, shots):
    cfg = PromptConfig(**{**CFG, "method": "soft_prompt", "soft_tokens": 4, "lr": 0.5, "train_steps": 6, "val_every": 2, "keep_best": True, "ckpt_every": 1})
    p1 = tiny_pipeline(seed=0)
    log1 = train_prompt(p1, shots, shots, out=tmp_path / "a", config=cfg, progress=False)
    assert not getattr(p1.unet, "peft_config", {})                   # no LoRA: only the soft prompt trained
    vals = log1.dropna(subset=["val_accuracy"])
    best = max(vals.itertuples(), key=lambda r: (r.val_pairwise, -r.val_loss))
    assert log1.attrs["selected_step"] == best.step
    again = evaluate_ranking(DSDScorer(p1, seed=cfg.seed), shots, cfg.val_draws, cfg.seed)
    assert abs(again["loss"] - best.val_loss) < 1e-5                  # the kept prompt is the one validated at that step
    train_prompt(tiny_pipeline(seed=0), shots, shots, out=tmp_path / "b", config=cfg, stop_after=3, progress=False)
    p2 = tiny_pipeline(seed=0)
    log2 = train_prompt(p2, shots, shots, out=tmp_path / "b", config=cfg, progress=False)
    assert torch.equal(soft_prompt(p1), soft_prompt(p2)) and log1.loss.iloc[1:].tolist() == log2.loss.iloc[1:].tolist()  # row 0: step-0 validation
    p3 = tiny_pipeline(seed=0)
    load_soft_prompt(p3, tmp_path / "a" / "soft_prompt.safetensors")
    im, cs = shots[1].images, shots[1].captions
    assert torch.allclose(DSDScorer(p3, steps=2).score(im, cs), DSDScorer(p1, steps=2).score(im, cs), atol=1e-6)


def test_soft_prompt_file_errors(tmp_path):
    from safetensors.torch import save_file
    p = tiny_pipeline(seed=0)
    with pytest.raises(DSDInputError, match="no soft prompt to save"): save_soft_prompt(p, tmp_path / "x.safetensors")
    save_file({"soft_prompt": torch.zeros(2, 7)}, tmp_path / "wide.safetensors")
    with pytest.raises(DSDInputError, match="7-wide vectors but this text encoder embeds in 32"): load_soft_prompt(p, tmp_path / "wide.safetensors")
    save_file({"emb": torch.zeros(2, 32)}, tmp_path / "other.safetensors")
    with pytest.raises(DSDInputError, match="not a dsd_nb soft prompt"): load_soft_prompt(p, tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DSDInputError, match="not a safetensors file"): load_soft_prompt(p, tmp_path / "junk.safetensors")
    with pytest.raises(DSDInputError, match="n_tokens must be an integer in 1..75"): add_soft_prompt(p, 76)
    assert soft_prompt(p) is None                                     # refused calls attach nothing
    add_soft_prompt(p, 2)
    with pytest.raises(DSDInputError, match="already has a soft prompt"):
        train_prompt(p, scene_ranking_examples("fewshot", 2, direction="i2t"), config=PromptConfig(method="soft_prompt", train_steps=1, batch_size=2), progress=False)


def test_soft_prompt_refusals_leave_usable_folders(tmp_path, shots):
    with pytest.raises(DSDInputError, match="soft_tokens must be at most 75"): PromptConfig(method="soft_prompt", soft_tokens=76)
    with pytest.raises(DSDInputError, match="non-empty list of seeds"): PromptConfig(val_seeds=(s for s in [3, 4]))
    cfg = PromptConfig(method="soft_prompt", soft_tokens=2, train_steps=2, batch_size=2, draws=1, ckpt_every=1)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "r", config=cfg, progress=False)
    assert (tmp_path / "r" / "soft_prompt.safetensors").exists()
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "r", config=PromptConfig(train_steps=2, batch_size=2), overwrite=True, progress=False)
    assert not (tmp_path / "r" / "soft_prompt.safetensors").exists() and (tmp_path / "r" / "adapter").exists()  # no stale file
    # a damaged checkpoint gets a clear error naming what to remove
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, stop_after=1, progress=False)
    (tmp_path / "d" / "checkpoints" / "last" / "soft_prompt.safetensors").write_bytes(b"junk")
    with pytest.raises(DSDInputError, match="damaged"): train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, progress=False)
    (tmp_path / "d" / "config.json").write_text("{")
    with pytest.raises(DSDInputError, match="config.json is damaged"): train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, progress=False)
    (tmp_path / "d" / "config.json").write_text("[1, 2]")                  # valid JSON, but not the settings
    with pytest.raises(DSDInputError, match="config.json is damaged"): train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "d", config=cfg, overwrite=True, progress=False)  # --overwrite starts it over
    assert (tmp_path / "d" / "done.json").exists()
    # an unfinished run of other settings: refused, naming the ways out; replaced with overwrite=True
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=cfg, stop_after=1, progress=False)
    lora = PromptConfig(train_steps=2, batch_size=2, draws=1)
    with pytest.raises(DSDInputError, match="unfinished run with other settings.*overwrite=True"):
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=lora, progress=False)
    train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "u", config=lora, overwrite=True, progress=False)
    assert json.loads((tmp_path / "u" / "config.json").read_text())["method"] == "lora" and (tmp_path / "u" / "adapter").exists()
    assert not (tmp_path / "u" / "checkpoints" / "last" / "soft_prompt.safetensors").exists()
    (tmp_path / "mine" / "adapter").mkdir(parents=True); (tmp_path / "mine" / "adapter" / "x.txt").write_text("mine")
    with pytest.raises(DSDInputError, match="holds files a run writes"):    # a folder that is not a run: nothing of it is replaced
        train_prompt(tiny_pipeline(seed=0), shots, out=tmp_path / "mine", config=lora, progress=False)
    assert (tmp_path / "mine" / "adapter" / "x.txt").read_text() == "mine"
    p = tiny_pipeline(seed=0)
    with pytest.raises(DSDInputError, match="NaN"): add_soft_prompt(p, 2, init=torch.full((2, 32), float("nan")))
    assert any(q.requires_grad for q in p.unet.parameters())            # a refused call changes nothing


def test_a_scorer_made_before_the_soft_prompt_follows_it(shots):
    p = tiny_pipeline(seed=0)
    for m in (p.unet, p.vae, p.text_encoder): m.requires_grad_(False)  # as add_soft_prompt leaves them (frozen weights may take
    old = DSDScorer(p, steps=2)                                           # other CPU kernels: compare frozen with frozen)
    im, cs = shots[0].images, shots[0].captions
    base = old.score(im, cs)
    P = add_soft_prompt(p, 3)
    with torch.no_grad(): P.add_(torch.randn(P.shape, generator=torch.Generator().manual_seed(1)))
    fresh = DSDScorer(p, steps=2).score(im, cs)
    assert torch.equal(old.score(im, cs), fresh) and not torch.allclose(fresh, base)
    remove_soft_prompt(p)
    assert torch.equal(old.score(im, cs), base)


def test_val_seeds_average_fixed_noise_banks(shots):
    cfg = dict(train_steps=2, batch_size=2, lr=1e-3, val_every=2, val_steps=2, draws=1, val_seeds=[3, 4], keep_best=True)
    rows = [train_prompt(tiny_pipeline(seed=0), shots, shots, config=PromptConfig(seed=s, **cfg), progress=False).iloc[0] for s in (0, 1)]
    base = tiny_pipeline(seed=0)
    per_bank = [evaluate_ranking(DSDScorer(base, seed=b, steps=2), shots, grid=True) for b in (3, 4)]
    assert rows[0].step == 0 and abs(rows[0].val_loss - sum(v["loss"] for v in per_bank) / 2) < 1e-6
    assert rows[0].val_loss == rows[1].val_loss                       # step 0 no longer depends on the training seed
    assert per_bank[0]["loss"] != per_bank[1]["loss"]                 # (the banks do differ)
    with pytest.raises(DSDInputError, match="non-empty list of seeds"): PromptConfig(val_seeds=[])


def test_comvg_examples(tmp_path):
    from dsd_nb.scenes import write_comvg, read_comvg
    from dsd_nb.benchmark_data import load_comvg  # the one ComVG reader (benchmarks and dsd-train --dataset)
    ex = load_comvg(write_comvg(tmp_path / "c", split="fewshot", n=2) / "comvg.csv")
    assert ex and all(e.direction == "t2i" and e.n_candidates == 2 and e.images[1].exists() for e in ex)
    with pytest.raises(DSDInputError, match="does not exist"): load_comvg(tmp_path / "none.csv")
    with pytest.raises(DSDInputError, match="is a folder: give the CSV file itself"): load_comvg(tmp_path)
    df = pd.read_csv(tmp_path / "c" / "comvg.csv")
    df.iloc[:0].to_csv(tmp_path / "c" / "header.csv", index=False)
    df.assign(sentence=[""] + list(df.sentence[1:])).to_csv(tmp_path / "c" / "nosentence.csv", index=False)
    (tmp_path / "c" / "empty.csv").write_text("")
    for name, msg in (("header.csv", "holds no rows"), ("empty.csv", "cannot be read as CSV"), ("nosentence.csv", r"no sentence \(lines \[2\]\)")):
        with pytest.raises(DSDInputError, match=msg): load_comvg(tmp_path / "c" / name)
    # dsd-train opens the images of its shots before it writes anything (it used to write config.json first)
    def train(*extra):
        return subprocess.run([_exe("dsd-train"), "--out", str(tmp_path / "run"), "--model", "tiny-random", "--dataset", str(tmp_path / "c" / "comvg.csv"),
                               "--val_n", "0", "--train_steps", "1", *extra], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    first = Path(ex[0].images[0].path); first.unlink()  # the first row's image: the others keep their own extension (all used to become .jpg)
    assert [Path(p.path).suffix for p in load_comvg(tmp_path / "c" / "comvg.csv")[1].images] == [".png", ".png"]
    r = train("--shots", "1.0")
    assert r.returncode == 2 and "1 of the chosen shots' images cannot be used" in r.stderr and str(first) in r.stderr, r.stderr[-2000:]
    first.write_bytes(b"")  # an empty file: refused before the run folder is made too
    r = train("--shots", "1.0")
    assert r.returncode == 2 and "is empty (0 bytes)" in r.stderr and not (tmp_path / "run").exists(), r.stderr[-2000:]
    second = Path(ex[1].images[1].path); assert second != first
    second.rename(second.with_suffix(".PNG"))  # an upper-case extension is found too
    df = read_comvg(tmp_path / "c" / "comvg.csv")
    assert str(second.with_suffix(".PNG")) in set(df.pos_path) | set(df.neg_path)
    r = train("--shots", "100")  # more shots than the CSV has rows: named with its flag
    assert r.returncode == 2 and f"--shots 100 is more than the {len(ex)} examples" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_bf16_mixed_precision_then_plain_scoring(shots):
    p = tiny_pipeline(seed=0)
    log = train_prompt(p, shots, config=PromptConfig(**{**CFG, "train_steps": 2, "mixed_precision": "bf16"}), progress=False)
    assert len(log) == 2 and log.loss.notna().all()
    q = tiny_pipeline(seed=0); add_lora(q, "default")
    with torch.no_grad():
        for a, b in zip(lora_parameters(q.unet), lora_parameters(p.unet)): a.copy_(b)
    s_p = DSDScorer(p, steps=2).score(shots[0].images, shots[0].captions)
    s_q = DSDScorer(q, steps=2).score(shots[0].images, shots[0].captions)
    assert torch.equal(s_p, s_q)  # no autocast left behind on the trained pipeline
    with pytest.raises(DSDInputError, match="fp16 mixed precision needs a GPU"):
        train_prompt(tiny_pipeline(seed=0), shots, config=PromptConfig(mixed_precision="fp16"), progress=False)


def test_dsd_train_stops_cleanly_on_sigterm(tmp_path):
    "A job scheduler's SIGTERM stops `dsd-train` like Ctrl-C: exit 130, the resume hint, no temporary folders left."
    import signal, time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    p = subprocess.Popen([_exe("dsd-train"), "--out", str(run), "--model", "tiny-random", "--shots", "4", "--train_steps", "100000",
                          "--batch_size", "2", "--val_n", "0", "--ckpt_every", "1", "--lr", "1e-3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not (run / "checkpoints" / "last" / "trainer_state.pt").exists() and p.poll() is None and time.time() - t0 < 600: time.sleep(0.2)
    assert p.poll() is None, p.stderr.read()[-2000:]
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "interrupted; run the same command again to resume" in err and "Traceback" not in err, err[-2000:]
    assert [d.name for d in (run / "checkpoints").iterdir()] == ["last"] and not list(run.glob(".adapter.*"))
    assert (run / "checkpoints" / "last" / "trainer_state.pt").exists() and not (run / "done.json").exists()
