"""What `pip install dsd_nb` gives a user: a wheel built from this checkout holds the package, both built-in models
and the console scripts, and the installed copy scores offline with the embedded default model, away from the
checkout, exactly as the development install does."""
import importlib.util, json, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "MODEL_CARD.md"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    "A wheel of this checkout (no dependencies, no build isolation: offline), and a folder it is installed into."
    for mod in ("pip", "setuptools"):  # looked up, not imported: importing both here trips setuptools' distutils shim
        if importlib.util.find_spec(mod) is None: pytest.skip(f"building a wheel needs {mod} in the environment")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if files.returncode != 0 or not files.stdout: pytest.skip("not a git checkout: the wheel is built from the files git tracks")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy of every tracked file (tests, notebooks and all): setuptools writes build/ and *.egg-info next to setup.py
    for f in files.stdout.decode().split("\0"):
        if f and (ROOT / f).is_file(): (src / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]  # offline: no index, no version check
    r = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    whl, = (tmp / "dist").glob("dsd_nb-*.whl")
    r = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return whl, tmp / "site"


def test_wheel_holds_package_models_and_scripts(wheel):
    whl, _ = wheel
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for model in ("scene-sd", "scene-sd-stage2"):
        missing = [f for f in MODEL_FILES if f"dsd_nb/assets/{model}/{f}" not in names]
        assert not missing, f"the wheel lacks {model}'s {missing}"
    modules = {p.name for p in (ROOT / "dsd_nb").glob("*.py")}
    assert {n.split("/")[1] for n in names if n.count("/") == 1 and n.startswith("dsd_nb/")} >= modules
    assert not any(n.startswith(("tests/", "nbs/", "bench/")) for n in names)  # only the package is installed
    for script in ("dsd-score", "dsd-scene", "dsd-train", "dsd-train-scene-sd"): assert f"{script} = dsd_nb." in entry, entry


def test_installed_wheel_scores_offline_like_the_checkout(wheel, tmp_path):
    _, site = wheel
    code = """
import json, sys, dsd_nb
from dsd_nb.scoring import DSDScorer
from dsd_nb.models import load_pipeline
from dsd_nb.scenes import scene_example, render
scene, cap, neg = scene_example("test", 0)
s = DSDScorer(load_pipeline(), steps=2, seed=0).score(render(scene), [cap.text(), neg[0][1].text()])
print(json.dumps(dict(file=dsd_nb.__file__, scores=s[0].tolist())))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, extra in (("installed", dict(PYTHONPATH=str(site), DSD_NB_CACHE=str(tmp_path / "cache-a"))),
                        ("checkout", dict(DSD_NB_CACHE=str(tmp_path / "cache-b")))):
        e = {**env, **extra}
        if name == "checkout": e.pop("PYTHONPATH", None)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(runs["installed"]["file"]).is_relative_to(site)  # the wheel's copy ran, not the checkout's
    assert not Path(runs["checkout"]["file"]).is_relative_to(site)
    assert runs["installed"]["scores"] == runs["checkout"]["scores"]
    assert runs["installed"]["scores"][0] > runs["installed"]["scores"][1]  # scene 0's true caption beats its subject negative
