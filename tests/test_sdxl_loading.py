"""Issue 20, loading side: an SDXL folder loads as a `StableDiffusionXLPipeline` (both text encoders, same weights); the parts
DSD never uses are not required; each pipeline DSD cannot score is refused from its configs, in one line, before any weights
load (through `load_pipeline`, a cached hub id, and the `dsd-score` console command, exit 2); `check_pipeline` refuses the
same on pipelines built in memory, before any UNet call."""
import json, os, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from dsd_nb.core import DSDInputError
from dsd_nb.models import (SUPPORTED_MODELS, tiny_pipeline, tiny_sdxl_pipeline, save_pipeline, load_pipeline, check_pipeline,
                           pipeline_family, _precheck)

SUPPORTED = f"DSD supports {SUPPORTED_MODELS}"


def _same(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k].cpu(), s2[k].cpu()) for k in s1)


@pytest.fixture(scope="module")
def xl():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, xl):
    "The tiny SD and SDXL pipelines, saved once: {'sd': folder, 'xl': folder}."
    root = tmp_path_factory.mktemp("saved")
    return {"sd": save_pipeline(tiny_pipeline(seed=0), root / "sd"), "xl": save_pipeline(xl, root / "xl")}


def _edit(base, dest, edits=(), drop=(), break_weights=False):
    "A copy of `base` with `edits` ((file, {key: value}), `...` removes the key), folders `drop` removed, weights broken if asked."
    shutil.copytree(base, dest)
    for rel, changes in edits:
        c = json.loads((dest / rel).read_text()); c.update(changes)
        (dest / rel).write_text(json.dumps({k: v for k, v in c.items() if v is not ...}))
    for d in drop: shutil.rmtree(dest / d)
    if break_weights:
        for w in dest.rglob("*.safetensors"): w.write_bytes(b"not safetensors")
    return dest


MI, UNET, SCHED = "model_index.json", "unet/config.json", "scheduler/scheduler_config.json"
# name: (base, edits, folders removed, what the one-line message must say)
REFUSALS = {
    "sd3": ("sd", [(MI, dict(_class_name="StableDiffusion3Pipeline", transformer=["diffusers", "SD3Transformer2DModel"], unet=...))], [],
            "StableDiffusion3Pipeline (Stable Diffusion 3) is transformer-based"),
    "transformer": ("sd", [(MI, dict(transformer=["diffusers", "SD3Transformer2DModel"]))], [], "is transformer-based"),
    "flux": ("sd", [(MI, dict(_class_name="FluxPipeline"))], [], "FluxPipeline (Flux) is transformer-based"),
    "pixart": ("sd", [(MI, dict(_class_name="PixArtSigmaPipeline"))], [], "(PixArt) is transformer-based"),
    "inpainting": ("sd", [(UNET, dict(in_channels=9))], [], "the UNet takes 9 input channels but the VAE makes 4 latent channels: an inpainting UNet"),
    "depth": ("sd", [(UNET, dict(in_channels=5))], [], "5 input channels but the VAE makes 4 latent channels: a depth-to-image UNet"),
    "text width": ("sd", [("text_encoder/config.json", dict(hidden_size=48))], [],
                   "the text encoder's hidden size 48 differs from the UNet's cross_attention_dim 32"),
    "cross_attention_dim": ("sd", [(UNET, dict(cross_attention_dim=768))], [], "hidden size 32 differs from the UNet's cross_attention_dim 768"),
    "prediction_type": ("sd", [(SCHED, dict(prediction_type="v-prediction"))], [], "the scheduler's prediction_type 'v-prediction' is unknown"),
    "flow matching": ("sd", [(SCHED, dict(_class_name="FlowMatchEulerDiscreteScheduler"))], [], "its scheduler (FlowMatchEulerDiscreteScheduler) is flow matching"),
    "flow prediction": ("sd", [(SCHED, dict(prediction_type="flow"))], [], "is flow matching (as in SD3 and Flux)"),
    "edm schedule": ("xl", [(SCHED, dict(_class_name="EDMDPMSolverMultistepScheduler", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5,
                                         beta_schedule=..., beta_start=..., beta_end=...))], [], "is an EDM noise schedule"),
    "no beta schedule": ("sd", [(SCHED, dict(beta_schedule=..., beta_start=..., beta_end=...))], [], "gives no DDPM beta schedule"),
    "vae mismatch": ("sd", [("vae/config.json", dict(latent_channels=16))], [],
                     "the UNet takes 4 input channels but the VAE makes 16 latent channels: the UNet and the VAE come from different models"),
    "addition_embed_type": ("sd", [(UNET, dict(addition_embed_type="image"))], [], "addition_embed_type='image'"),
    "class labels": ("sd", [(UNET, dict(class_embed_type="projection"))], [], "the UNet needs class labels"),
    "unconditional UNet": ("sd", [(MI, dict(unet=["diffusers", "UNet2DModel"]))], [], "its UNet is a UNet2DModel"),
    "no vae": ("sd", [(MI, dict(vae=...))], ["vae"], "the pipeline lacks vae"),
    "sdxl without text_encoder_2": ("xl", [(MI, dict(text_encoder_2=...))], ["text_encoder_2"], "the SDXL pipeline lacks text_encoder_2"),
    "sdxl text_encoder_2 folder gone": ("xl", [], ["text_encoder_2"], "lists text_encoder_2 but there is no text_encoder_2/ folder"),
    "sdxl unet as sd": ("xl", [(MI, dict(_class_name="StableDiffusionPipeline", text_encoder_2=..., tokenizer_2=...))], [],
                        "the UNet is an SDXL UNet (addition_embed_type='text_time'"),
    "sdxl widths": ("xl", [("text_encoder_2/config.json", dict(hidden_size=48))], [],
                    "the text encoders' hidden sizes 32 + 48 = 80 differ from the UNet's cross_attention_dim 64"),
    "sdxl pooled": ("xl", [(UNET, dict(projection_class_embeddings_input_dim=96))], [],
                    "projection_class_embeddings_input_dim is 96, but text_encoder_2's pooled embedding (32) and 6 time ids x "
                    "addition_time_embed_dim 8 make 80"),
    "sdxl refiner": ("xl", [(MI, dict(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None], tokenizer=[None, None],
                                      requires_aesthetics_score=True)), (UNET, dict(cross_attention_dim=32, projection_class_embeddings_input_dim=72))],
                     ["text_encoder", "tokenizer"], "an SDXL refiner (StableDiffusionXLImg2ImgPipeline): img2img only"),
}


def _refusal_folder(saved, root, name):
    base, edits, drop, _ = REFUSALS[name]
    return _edit(saved[base], root / name.replace(" ", "_"), edits, drop, break_weights=True)


def test_sdxl_folder_loads_as_sdxl_pipeline(saved, xl):
    q = load_pipeline(str(saved["xl"]))
    assert type(q) is StableDiffusionXLPipeline and pipeline_family(q) == "sdxl"
    assert all(_same(getattr(xl, k), getattr(q, k)) for k in ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert q.tokenizer_2("a red cat").input_ids == xl.tokenizer_2("a red cat").input_ids
    assert check_pipeline(q) == [] and check_pipeline(xl) == []


def test_sd_folder_still_loads_as_sd(saved, pipe):
    q = load_pipeline(str(saved["sd"]))
    assert type(q) is StableDiffusionPipeline and pipeline_family(q) == "sd" and _same(q.unet, pipe.unet)


UNUSED = dict(feature_extractor=["transformers", "CLIPImageProcessor"], safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
              image_encoder=["transformers", "CLIPVisionModelWithProjection"])


@pytest.mark.parametrize("base", ["sd", "xl"])
def test_parts_dsd_never_uses_are_not_required(saved, tmp_path, pipe, base):
    "A real SD 1.5 folder lists a feature extractor and a safety checker; copies without those folders load (they are not loaded at all)."
    f = _edit(saved[base], tmp_path / "m", [(MI, dict(UNUSED, **({"requires_safety_checker": True} if base == "sd" else {})))])
    q = load_pipeline(str(f))
    assert type(q) is (StableDiffusionPipeline if base == "sd" else StableDiffusionXLPipeline)
    assert q.feature_extractor is None and getattr(q, "safety_checker", None) is None and q.image_encoder is None
    if base == "sd": assert _same(q.unet, pipe.unet)


@pytest.mark.parametrize("name", list(REFUSALS))
def test_config_refusals_one_line_before_weights(saved, tmp_path, monkeypatch, name):
    "Every weights file is broken and `from_pretrained` may not be called: the config refusal must come first."
    f = _refusal_folder(saved, tmp_path, name)
    def no_loading(*a, **k): raise AssertionError("from_pretrained was called before the configs were checked")
    for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline): monkeypatch.setattr(cls, "from_pretrained", no_loading)
    with pytest.raises(DSDInputError) as e: load_pipeline(str(f))
    msg = str(e.value)
    assert REFUSALS[name][3] in msg and "\n" not in msg and msg.startswith(f"cannot use {str(f)!r}: "), msg
    assert msg.endswith(SUPPORTED) or "folder" in name, msg


def test_sample_prediction_is_not_refused(saved, tmp_path):
    "`epsilon_from_prediction` converts sample (x0) predictions to the noise, as it does v-predictions: loaded, with the same warning."
    f = _edit(saved["sd"], tmp_path / "m", [(SCHED, dict(prediction_type="sample"))])
    with pytest.warns(UserWarning, match="predicts 'sample'"): q = load_pipeline(str(f))
    assert q.scheduler.config.prediction_type == "sample"


def _fake_hub(monkeypatch, root, repos):
    "A Hugging Face cache at `root` holding `repos` (id -> folder), as `hf download` leaves it."
    import huggingface_hub.constants as hc
    for repo, src in repos.items():
        d = root / f"models--{repo.replace('/', '--')}"
        shutil.copytree(src, d / "snapshots" / ("0" * 40)); (d / "refs").mkdir(); (d / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(root))


def test_cached_hub_ids_are_checked_and_loaded(saved, tmp_path, monkeypatch, xl):
    sd3 = _refusal_folder(saved, tmp_path, "sd3")
    _fake_hub(monkeypatch, tmp_path / "hub", {"me/tiny-xl": saved["xl"], "me/tiny-sd3": sd3})
    q = load_pipeline("me/tiny-xl")
    assert type(q) is StableDiffusionXLPipeline and _same(q.text_encoder_2, xl.text_encoder_2)
    with pytest.raises(DSDInputError, match=r"^cannot use 'me/tiny-sd3': StableDiffusion3Pipeline \(Stable Diffusion 3\) is transformer-based"):
        load_pipeline("me/tiny-sd3")


def test_uncached_hub_id_checked_from_downloaded_configs(saved, tmp_path, monkeypatch):
    "A hub id that is not cached: the small JSON files are fetched first (here from a folder), so the refusal comes before the weights."
    inpaint = _refusal_folder(saved, tmp_path, "inpainting")
    import huggingface_hub
    fetched = []
    def fake_download(repo_id, filename, **kw):
        fetched.append(filename); p = inpaint / filename
        if not p.exists(): raise FileNotFoundError(filename)  # what the hub answers, in short
        return str(p)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(DSDInputError, match="9 input channels"): _precheck("me/inpaint", False, "me/inpaint")
    assert fetched and all(f.endswith(".json") for f in fetched), fetched
    assert _precheck("me/inpaint", True, "me/inpaint") is None  # offline and not cached: nothing to read, `from_pretrained` reports


def test_live_sd_pipeline_with_sdxl_unet_refused(pipe, xl):
    "The crash the issue reported (TypeError in get_aug_embed): a plain pipeline holding an SDXL UNet, refused by check_pipeline."
    bad = StableDiffusionPipeline(vae=xl.vae, text_encoder=xl.text_encoder, tokenizer=xl.tokenizer, unet=xl.unet, scheduler=pipe.scheduler,
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with pytest.raises(DSDInputError, match="has no text_encoder_2") as e: check_pipeline(bad)
    assert "\n" not in str(e.value) and str(e.value).endswith(SUPPORTED)


@pytest.mark.parametrize("part,match", [("text_encoder_2", "the SDXL pipeline lacks text_encoder_2"),
                                        ("tokenizer_2", "the SDXL pipeline lacks tokenizer_2"),
                                        ("text_encoder", "the SDXL pipeline lacks text_encoder")])
def test_live_sdxl_pipeline_needs_both_text_encoders(xl, part, match):
    with pytest.raises(DSDInputError, match=match): check_pipeline(StableDiffusionXLPipeline(**{**xl.components, part: None}))


def test_live_width_mismatches_refused(xl, pipe):
    wide = tiny_sdxl_pipeline(text_dims=(32, 48))
    with pytest.raises(DSDInputError, match=r"32 \+ 48 = 80 differ from the UNet's cross_attention_dim 64"):
        check_pipeline(StableDiffusionXLPipeline(**{**xl.components, "text_encoder_2": wide.text_encoder_2}))
    sd_wide = StableDiffusionPipeline(**{**pipe.components, "text_encoder": tiny_pipeline(text_dim=48).text_encoder})
    with pytest.raises(DSDInputError, match="hidden size 48 differs from the UNet's cross_attention_dim 32"): check_pipeline(sd_wide)


def test_live_transformer_pipeline_refused():
    class FluxPipeline:  # stands in for a live transformer-based pipeline (no UNet)
        transformer, vae, tokenizer, text_encoder = torch.nn.Linear(1, 1), None, None, None
    with pytest.raises(DSDInputError, match=r"^FluxPipeline \(Flux\) is transformer-based"): check_pipeline(FluxPipeline())


# --- the console: each refusal, one line on stderr, exit 2 -------------------------------------------------------------------
CLI_CASES = ["sd3", "inpainting", "text width", "prediction_type", "sdxl without text_encoder_2", "sdxl refiner", "sdxl pooled"]


def _exe():
    p = Path(sys.executable).with_name("dsd-score")
    return str(p) if p.exists() else shutil.which("dsd-score")


def test_cli_refusals_exit_2_one_line(saved, tmp_path):
    import PIL.Image
    img = tmp_path / "x.png"; PIL.Image.new("RGB", (32, 32), (10, 20, 30)).save(img)
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    env.update(HF_HUB_OFFLINE="1")
    folders = {n: _refusal_folder(saved, tmp_path, n) for n in CLI_CASES}
    run = lambda f: subprocess.run([_exe(), str(img), "a caption", "--model", str(f)], capture_output=True, text=True, encoding="utf-8",
                                   env=env, timeout=300)
    with ThreadPoolExecutor(max_workers=2) as pool: results = dict(zip(folders, pool.map(run, folders.values())))
    for name, r in results.items():
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (name, r.returncode, r.stderr)
        assert lines[0].startswith(f"dsd-score: error: cannot use {str(folders[name])!r}: "), (name, lines[0])
        assert REFUSALS[name][3] in lines[0] and r.stdout.strip() == "", (name, lines[0])


def test_missing_component_config_is_named(saved, tmp_path):
    "A component folder without its config (a half-copied model) is named, not left to transformers' unrelated message."
    f = _edit(saved["xl"], tmp_path / "m", break_weights=True)
    (f / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(DSDInputError, match=r"text_encoder_2/config.json is missing or not JSON"): load_pipeline(str(f))
