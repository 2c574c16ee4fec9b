"""Shared fixtures for the dsd_nb test suite.

Everything runs on CPU, offline: `HF_HUB_OFFLINE=1` is forced before any Hugging Face library is
imported, and `DSD_NB_CACHE` points at a per-session temporary folder, so no test touches the
network or the user's cache. The tiny random pipeline is built once per session; tests that change
a model (LoRA adapters, weights) build their own copy with `fresh_pipe`.
"""
import os, shutil, sys, tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: no hub lookups, no 20 s retries
_SESSION_CACHE = tempfile.mkdtemp(prefix="dsd_nb_test_cache_")
os.environ["DSD_NB_CACHE"] = _SESSION_CACHE  # never the user's ~/.cache/dsd_nb
# The test models are tiny: one intra-op thread is fastest, and with 2 threads on a busy 2-core machine
# every OpenMP barrier spins (a 10 ms UNet call was measured at 4 s). Subprocesses (the CLI) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

try: torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
except ValueError: torch.set_num_threads(1)

from dsd_nb.models import tiny_pipeline
from dsd_nb.attention import select_layers

ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    "Every test runs offline with the session's temporary model cache, whatever an earlier test changed."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DSD_NB_CACHE", _SESSION_CACHE)


@pytest.fixture(scope="session")
def pipe():
    "The tiny random-weight pipeline (64 px, 8x8 latent), shared by the session: tests must not modify it."
    return tiny_pipeline(seed=0)


@pytest.fixture
def fresh_pipe():
    "A private tiny pipeline (identical weights to `pipe`) that a test may modify."
    return tiny_pipeline(seed=0)


@pytest.fixture
def lora_pipe(fresh_pipe):
    "A fresh tiny pipeline whose UNet carries the reference's LoRA (rank 4, alpha 4, gaussian, q/k/v/out); returns (pipe, lora params)."
    peft = pytest.importorskip("peft")
    unet = fresh_pipe.unet
    unet.requires_grad_(False)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return fresh_pipe, {n: p for n, p in unet.named_parameters() if "lora_" in n}


@pytest.fixture(scope="session")
def images():
    "Three different 64x64 RGB images as a float tensor in [0, 1], [3, 3, 64, 64]."
    g = torch.Generator().manual_seed(1234)
    base = torch.rand(3, 3, 8, 8, generator=g)  # smooth-ish images: upsampled coarse noise plus fine noise
    x = torch.nn.functional.interpolate(base, size=(64, 64), mode="bilinear", align_corners=False)
    x = 0.8 * x + 0.2 * torch.rand(3, 3, 64, 64, generator=g)
    return x.clamp(0, 1)


@pytest.fixture(scope="session")
def captions():
    return ["a red cat on a tree", "a blue car", "the big house", "a small dog with a man"]


@pytest.fixture(scope="session")
def ref_layer_names(pipe):
    return [l.name for l in select_layers(pipe.unet, "reference")]


@pytest.fixture(scope="session")
def chelsea_path():
    "A real photo shipped with scikit-image (the cat 'Chelsea', 451x300 RGB PNG)."
    skimage = pytest.importorskip("skimage")
    p = Path(skimage.__file__).parent / "data" / "chelsea.png"
    if not p.exists(): pytest.skip("scikit-image's data/chelsea.png is not installed")
    return p
