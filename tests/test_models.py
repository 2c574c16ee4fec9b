"""models: saving and loading pipelines offline, failing fast and clearly on missing or unusable
models, checking loaded pipelines (placeholder tokenizers, v-prediction, inpainting UNets)."""
import json, warnings
import pytest
import torch
from transformers import CLIPTokenizer
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dsd_nb.core import DSDInputError
from dsd_nb.models import (tiny_pipeline, clip_tokenizer, save_pipeline, load_pipeline, check_pipeline, resolve_model,
                           builtin_model_path, BUILTIN_MODELS, DEFAULT_MODEL, cache_dir)
from dsd_nb.scoring import DSDScorer

TEXTS = ["a red cat on a tree", "café 猫 🐱", "", "the the the", "zebra-like quokka!"]


def _same_weights(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1: assert torch.equal(s1[k].cpu(), s2[k].cpu()), k


def _replace(pipe, **parts):
    kw = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
              scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kw.update(parts)
    return StableDiffusionPipeline(**kw)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, pipe):
    return save_pipeline(pipe, tmp_path_factory.mktemp("models") / "tiny")


# ----------------------------------------------------------------------------- builders

def test_tiny_pipeline_is_deterministic_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a, b = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "building must not consume the global RNG"
    _same_weights(a.unet, b.unet); _same_weights(a.vae, b.vae); _same_weights(a.text_encoder, b.text_encoder)
    c = tiny_pipeline(seed=1)
    w = "conv_in.weight"
    assert not torch.equal(a.unet.state_dict()[w], c.unet.state_dict()[w])


def test_tiny_pipeline_shapes(pipe):
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 4
    assert pipe.vae.config.latent_channels == 4 and pipe.vae.config.scaling_factor == 0.18215
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    assert check_pipeline(pipe) == []


def test_clip_tokenizer():
    tok = clip_tokenizer()
    assert len(tok) >= 259 and tok.model_max_length == 77
    ids = tok("a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(tok("café 猫").input_ids, skip_special_tokens=True).strip() == "café 猫"  # byte-level: lossless


# ----------------------------------------------------------------------------- save / load round trip

def test_save_and_load_round_trip(pipe, saved_tiny):
    assert (saved_tiny / "model_index.json").exists()
    q = load_pipeline(str(saved_tiny))
    for part in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(pipe, part), getattr(q, part))
    for t in TEXTS:
        assert q.tokenizer(t).input_ids == pipe.tokenizer(t).input_ids, t
    assert q.tokenizer.model_max_length == 77 and len(q.tokenizer) == len(pipe.tokenizer)
    assert q.scheduler.config.prediction_type == "epsilon"
    assert q.unet.dtype == torch.float32 and q.unet.device.type == "cpu"
    # loaded from a Path too, and it scores exactly like the original
    q2 = load_pipeline(saved_tiny)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = DSDScorer(pipe, steps=2).score(x, ["a cat", "a dog"])
    assert torch.allclose(DSDScorer(q2, steps=2).score(x, ["a cat", "a dog"]), a, atol=1e-6)


def test_load_bf16(saved_tiny):
    q = load_pipeline(str(saved_tiny), dtype="bf16")
    assert q.unet.dtype == torch.bfloat16
    with pytest.raises(DSDInputError, match="fp16"):
        load_pipeline(str(saved_tiny), dtype="fp16", device="cpu")


def test_save_pipeline_refuses_to_overwrite(pipe, saved_tiny, tmp_path):
    with pytest.raises(DSDInputError, match="already exists"):
        save_pipeline(pipe, saved_tiny)
    target = tmp_path / "p"
    save_pipeline(tiny_pipeline(seed=1), target)
    save_pipeline(pipe, target, overwrite=True)
    _same_weights(load_pipeline(str(target)).unet, pipe.unet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"], "no temporary folders may be left behind"


def test_builtin_model_in_private_cache(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DSD_NB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert DEFAULT_MODEL in BUILTIN_MODELS
    folder = builtin_model_path("tiny-random")
    assert folder.parent == tmp_path / "cache" and (folder / "model_index.json").exists()
    assert resolve_model("tiny-random") == (str(folder), True)
    q = load_pipeline("tiny-random")
    _same_weights(q.unet, pipe.unet)
    assert builtin_model_path("tiny-random") == folder  # cached: built once
    with pytest.raises(DSDInputError, match="built-in"):
        builtin_model_path("nope")


def test_first_use_of_builtin_model_is_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DSD_NB_CACHE", str(tmp_path / "fresh-cache"))
    capfd.readouterr()
    load_pipeline("tiny-random", progress=False)
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err


# ----------------------------------------------------------------------------- failing fast and clearly

def test_missing_folder(tmp_path):
    with pytest.raises(DSDInputError, match="not found"):
        load_pipeline(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(DSDInputError):
        load_pipeline("./no-such-model-folder")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DSDInputError, match="no model_index.json"):
        load_pipeline(str(tmp_path))
    f = tmp_path / "file.txt"; f.write_text("x")
    with pytest.raises(DSDInputError, match="not a diffusers pipeline folder"):
        load_pipeline(str(f))


def test_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DSDInputError, match="HF_HUB_OFFLINE"):
        load_pipeline("nobody/nothing")
    with pytest.raises(DSDInputError, match="not in the local Hugging Face cache"):
        resolve_model("stabilityai/not-a-real-model-xyz")


def test_unknown_name():
    with pytest.raises(DSDInputError, match="not a built-in name"):
        load_pipeline("tiny-rand0m")


def test_folder_with_broken_weights(pipe, tmp_path):
    folder = save_pipeline(pipe, tmp_path / "broken")
    for f in (folder / "unet").glob("*.safetensors"): f.write_bytes(b"not safetensors")
    with pytest.raises(DSDInputError, match="could not load"):
        load_pipeline(str(folder))


# ----------------------------------------------------------------------------- check_pipeline

def test_placeholder_tokenizer_rejected(pipe):
    dummy = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2}, merges=[], model_max_length=77)
    assert len(dummy) <= 3
    with pytest.raises(DSDInputError, match="tokenizer"):
        check_pipeline(_replace(pipe, tokenizer=dummy))


def test_missing_tokenizer_files_rejected_on_load(pipe, tmp_path):
    "Offline, transformers returns a placeholder tokenizer when the files are missing: load_pipeline must refuse it."
    folder = save_pipeline(pipe, tmp_path / "notok")
    for f in (folder / "tokenizer").iterdir(): f.unlink()
    with pytest.raises(DSDInputError, match="tokenizer"):
        load_pipeline(str(folder))


def test_overlong_tokenizer_context_is_capped(pipe):
    tok = clip_tokenizer(max_length=77)
    tok.model_max_length = int(1e30)  # what transformers gives without a tokenizer_config.json
    p = _replace(pipe, tokenizer=tok)
    with pytest.warns(UserWarning, match="model_max_length"):
        check_pipeline(p)
    assert p.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 77


def test_v_prediction_warns(pipe, tmp_path):
    folder = save_pipeline(pipe, tmp_path / "vpred")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text()); cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="v-prediction"):
        q = load_pipeline(str(folder))
    assert q.scheduler.config.prediction_type == "v_prediction"
    with pytest.warns(UserWarning, match="v-prediction") as rec:
        notes = check_pipeline(q)
    assert len(notes) == 1 and "v-prediction" in notes[0]


def _unet(in_channels):
    return UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                cross_attention_dim=32, norm_num_groups=8)


def test_inpainting_unet_rejected(pipe, tmp_path):
    bad = _replace(pipe, unet=_unet(9))
    with pytest.raises(DSDInputError, match="9 input channels"):
        check_pipeline(bad)
    folder = save_pipeline(bad, tmp_path / "inpaint")
    with pytest.raises(DSDInputError, match="9 input channels"):
        load_pipeline(str(folder))
    check_pipeline(_replace(pipe, unet=_unet(4)))  # the same small UNet with 4 channels is fine


def test_scorer_rejects_inpainting_unet(pipe):
    bad = _replace(pipe, unet=_unet(9))
    with pytest.raises(DSDInputError, match="input channels"):
        DSDScorer(bad, steps=2).score(torch.rand(1, 3, 64, 64), ["a cat"])


def test_unet_without_cross_attention_rejected(pipe):
    from diffusers import UNet2DConditionModel as U
    plain = U(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
              down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
              mid_block_type=None, cross_attention_dim=32, norm_num_groups=8)
    with pytest.raises(DSDInputError, match="cross-attention"):
        check_pipeline(_replace(pipe, unet=plain))
