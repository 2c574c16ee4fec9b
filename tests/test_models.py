"""models through the scorer and the process's output: a saved and loaded pipeline scores exactly like the original, an
inpainting UNet, an SDXL UNet in a plain pipeline and a text encoder of the wrong width are refused by the scorer before any
UNet call, and the first build of a built-in model prints nothing. Saving, loading, failing fast and `check_pipeline` live in
02_models; SDXL loading and the config refusals in test_sdxl_loading."""
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dsd_nb.core import DSDInputError
from dsd_nb.models import save_pipeline, load_pipeline, tiny_pipeline, tiny_sdxl_pipeline
from dsd_nb.scoring import DSDScorer


def _replace(pipe, **parts):
    kw = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
              scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kw.update(parts)
    return StableDiffusionPipeline(**kw)


def test_loaded_pipeline_scores_like_the_original(pipe, tmp_path):
    q = load_pipeline(save_pipeline(pipe, tmp_path / "tiny"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = DSDScorer(pipe, steps=2).score(x, ["a cat", "a dog"])
    assert torch.allclose(DSDScorer(q, steps=2).score(x, ["a cat", "a dog"]), a, atol=1e-6)


def test_first_use_of_builtin_model_is_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DSD_NB_CACHE", str(tmp_path / "fresh-cache"))
    capfd.readouterr()
    load_pipeline("tiny-random", progress=False)
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err


def _unet(in_channels):
    return UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                cross_attention_dim=32, norm_num_groups=8)


def test_scorer_rejects_inpainting_unet(pipe):
    bad = _replace(pipe, unet=_unet(9))
    with pytest.raises(DSDInputError, match="input channels"):
        DSDScorer(bad, steps=2).score(torch.rand(1, 3, 64, 64), ["a cat"])


def _never_called(unet):
    "Make any call of `unet` fail the test."
    def hook(*a, **k): raise AssertionError("the UNet was called")
    return unet.register_forward_pre_hook(hook)


@pytest.mark.parametrize("case,match", [("sdxl unet", "has no text_encoder_2"),
                                        ("text width", "hidden size 48 differs from the UNet's cross_attention_dim 32")])
def test_scorer_refuses_before_any_unet_call(pipe, case, match):
    "Issue 20: these crashed inside diffusers (TypeError in get_aug_embed; RuntimeError: mat1 and mat2 shapes cannot be multiplied)."
    if case == "sdxl unet":
        xl = tiny_sdxl_pipeline(seed=0)
        bad = _replace(pipe, unet=xl.unet, text_encoder=xl.text_encoder, tokenizer=xl.tokenizer)
    else: bad = _replace(pipe, text_encoder=tiny_pipeline(text_dim=48).text_encoder)
    h = _never_called(bad.unet)
    try:
        with pytest.raises(DSDInputError, match=match) as e: DSDScorer(bad, steps=2).score(torch.rand(1, 3, 64, 64), ["a cat"])
        assert "\n" not in str(e.value)
    finally: h.remove()
