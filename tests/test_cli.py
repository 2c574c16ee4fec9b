"""The installed console scripts `dsd-score` (on a real photo) and `dsd-scene`, run as subprocesses offline.

Each run pays Python's import of torch and diffusers (a few seconds), so all runs are started together
on a small thread pool the first time a test here needs one; each test then waits for its own run.
"""
import json, os, re, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dsd_nb.models import builtin_model_path, DEFAULT_MODEL
from dsd_nb.scoring import DSDScorer
from dsd_nb.core import reference_timesteps

CAPS = ["a cat", "a red car", "café 猫 🐱"]  # non-ASCII goes through argv, a UTF-8 file and JSON
STEPS = 2


def _exe():
    p = Path(sys.executable).with_name("dsd-score")
    if p.exists(): return str(p)
    found = shutil.which("dsd-score")
    assert found, "the dsd-score console script is not installed (pip install -e .)"
    return found


def _run(args, cache, input=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    env.update(HF_HUB_OFFLINE="1", DSD_NB_CACHE=str(cache))  # the CLI itself must keep the libraries quiet
    return subprocess.run([_exe(), *map(str, args)], capture_output=True, text=True, encoding="utf-8", env=env, timeout=300, input=input)


def _second_image(tmp):
    import PIL.Image
    p = tmp / "second.png"
    if not p.exists(): PIL.Image.new("RGB", (64, 64), (200, 30, 30)).save(p)
    return p


def _jobs(img, tmp):
    caps_file = tmp / "captions.txt"
    caps_file.write_text("# captions, one per line\n\n" + "\n".join(f"  {c}  " for c in CAPS) + "\n", encoding="utf-8")
    base = [img, *CAPS, "--steps", STEPS, "--model", "tiny-random"]
    second = _second_image(tmp)
    jobs = {
        "table": base,
        "json": [*base, "--json"],
        "default model": [img, *CAPS, "--steps", STEPS, "--json"],
        "captions_file": [img, "--captions_file", caps_file, "--steps", STEPS, "--json", "--model", "tiny-random"],
        "captions from stdin": ([img, "--captions_file", "-", "--steps", STEPS, "--json", "--model", "tiny-random"], "\n".join(CAPS) + "\n"),
        "bad:missing image": [tmp / "no-such-image.png", "a cat", "--steps", STEPS],
        "bad:no captions": [img, "--steps", STEPS],
        "bad:--mode bogus": [img, "a cat", "--mode", "bogus"],
        "bad:--steps 0": [img, "a cat", "--steps", "0"],
        "bad:--steps abc": [img, "a cat", "--steps", "abc"],
        "bad:empty caption": [img, "a cat", "", "--steps", STEPS],
        "bad:--model nobody/nothing": [img, "a cat", "--model", "nobody/nothing", "--steps", STEPS],
        "bad:--dtype fp16 on CPU": [img, "a cat", "--dtype", "fp16", "--device", "cpu", "--steps", STEPS],
        "bad:unknown --layers": [img, "a cat", "--layers", "mid.a0,no_such_layer", "--steps", STEPS],
        "options anywhere": [img, "--steps", STEPS, *CAPS[:1], "--model", "tiny-random", *CAPS[1:], "--json"],
        "several images": [img, second, *CAPS, "--steps", STEPS, "--model", "tiny-random", "--json"],
        "several images, tables": [img, second, *CAPS, "--steps", STEPS, "--model", "tiny-random"],
        "image among captions": [img, CAPS[0], second, "--steps", STEPS, "--model", "tiny-random", "--json"],
    }
    return jobs


@pytest.fixture(scope="module")
def cli_tmp(tmp_path_factory):
    "The folder of this module's runs (their captions file, a second image, the cache)."
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cli(chelsea_path, cli_tmp):
    "Start every dsd-score run of this module at once (2 workers); returns name -> future of CompletedProcess."
    tmp = cli_tmp
    cache = tmp / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSD_NB_CACHE", str(cache))
        builtin_model_path("tiny-random")  # build the cached built-in model once, before the runs share the cache
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {name: job if isinstance(job, tuple) else (job, None) for name, job in _jobs(chelsea_path, tmp).items()}  # (args, stdin text)
    futures = {name: pool.submit(_run, args, cache, inp) for name, (args, inp) in jobs.items()}
    futures["fresh cache"] = pool.submit(_run, [tmp / "no-such-image.png", "a cat"], tmp / "fresh-cache")
    yield {k: (lambda f=f: f.result()) for k, f in futures.items()}
    pool.shutdown(wait=True)


def _ok(r):
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def _table(stdout):
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("# model=") and lines[1].split() == ["rank", "score", "caption"]
    rows = []
    for line in lines[2:]:
        m = re.fullmatch(r"\s*(\d+)\s+(-?\d+\.\d+)\s+(.+)", line)
        assert m, line
        rows.append((int(m[1]), float(m[2]), m[3]))
    return rows


def test_table(cli):
    r = cli["table"]()
    rows = _table(_ok(r))
    assert len(rows) == 3
    assert [x[0] for x in rows] == [1, 2, 3]
    scores = [x[1] for x in rows]
    assert scores == sorted(scores, reverse=True)
    assert sorted(x[2] for x in rows) == sorted(CAPS)
    assert all(torch.isfinite(torch.tensor(scores)))
    assert r.stderr.strip() == "", r.stderr


def test_json(cli, pipe, chelsea_path):
    out = json.loads(_ok(cli["json"]()))
    assert out["model"] == "tiny-random" and out["mode"] == "dsd" and out["steps"] == STEPS and out["seed"] == 0
    assert out["timesteps"] == reference_timesteps(STEPS).tolist()
    assert len(out["layers"]) == 6
    rk = out["ranking"]
    assert [x["rank"] for x in rk] == [1, 2, 3] and sorted(x["caption"] for x in rk) == sorted(CAPS)
    scores = [x["score"] for x in rk]
    assert scores == sorted(scores, reverse=True)
    # the same numbers as the Python API on the same built-in model (tiny_pipeline(seed=0))
    api = DSDScorer(pipe, steps=STEPS).score(chelsea_path, CAPS)[0]
    for x in rk:
        assert abs(x["score"] - api[CAPS.index(x["caption"])].item()) < 1e-5
    # and the table shows the same ranking, rounded to 4 decimals
    rows = _table(_ok(cli["table"]()))
    assert [(c, round(s, 4)) for _, s, c in rows] == [(x["caption"], round(x["score"], 4)) for x in rk]


def test_default_model_is_the_shipped_one(cli, chelsea_path):
    "Without --model the command scores with the shipped scene-world model, exactly as the Python API does."
    from dsd_nb.models import load_pipeline
    out = json.loads(_ok(cli["default model"]()))
    assert out["model"] == DEFAULT_MODEL == "scene-sd"
    api = DSDScorer(load_pipeline(), steps=STEPS).score(chelsea_path, CAPS)[0]
    for x in out["ranking"]:
        assert abs(x["score"] - api[CAPS.index(x["caption"])].item()) < 1e-5


def test_captions_file(cli):
    a = json.loads(_ok(cli["captions_file"]()))
    b = json.loads(_ok(cli["json"]()))
    assert sorted(x["caption"] for x in a["ranking"]) == sorted(CAPS)  # comments, blanks and spaces dropped
    assert a["ranking"] == b["ranking"]


def test_captions_from_stdin(cli):
    "`--captions_file -` reads the captions from standard input, as from a shell pipe."
    a = json.loads(_ok(cli["captions from stdin"]()))
    assert a["ranking"] == json.loads(_ok(cli["json"]()))["ranking"]


BAD = ["missing image", "no captions", "--mode bogus", "--steps 0", "--steps abc", "empty caption",
       "--model nobody/nothing", "--dtype fp16 on CPU", "unknown --layers"]


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_one_line_exit_2(cli, case):
    r = cli[f"bad:{case}"]()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dsd-score: error: ")
    assert r.stdout.strip() == ""


def test_bad_argument_messages_say_what_is_wrong(cli):
    msg = {c: cli[f"bad:{c}"]().stderr for c in BAD}
    assert "does not exist" in msg["missing image"]
    assert "caption" in msg["no captions"]
    assert "bogus" in msg["--mode bogus"]
    assert "steps" in msg["--steps 0"] and "steps" in msg["--steps abc"]
    assert "empty" in msg["empty caption"]
    assert "nobody/nothing" in msg["--model nobody/nothing"]
    assert "fp16" in msg["--dtype fp16 on CPU"]
    assert "no_such_layer" in msg["unknown --layers"]


def test_bad_argument_one_line_with_empty_cache(cli):
    r = cli["fresh cache"]()
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_newcomer_breakages_exit_two(tmp_path):
    "Inputs a newcomer found to crash the command: huge seeds, broken model configs, a bad image with a broken model."
    import json as _json, os as _os, subprocess as _sp, sys as _sys
    env = dict(_os.environ, HF_HUB_OFFLINE="1")
    img = tmp_path / "x.png"
    import PIL.Image as _I; _I.new("RGB", (32, 32), (10, 20, 30)).save(img)
    m = tmp_path / "m_list"; m.mkdir(); (m / "model_index.json").write_text("[1, 2, 3]")
    e = tmp_path / "m_empty"; e.mkdir(); (e / "model_index.json").write_text("{}")
    cases = [[str(img), "a", "--seed", str(2 ** 70)], [str(img), "a", "--model", str(m)], [str(img), "a", "--model", str(e)],
             [str(tmp_path / "nope.png"), "a", "--model", str(m)]]
    for argv in cases:
        r = _sp.run(["dsd-score", *argv], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (argv, r.stderr)
    r = _sp.run(["dsd-score", str(tmp_path / "nope.png"), "a", "--model", str(m)], capture_output=True, text=True, env=env, timeout=300)
    assert "does not exist" in r.stderr  # the image is checked before the model


def test_options_anywhere_on_the_line(cli):
    "`dsd-score img --steps 2 \"a\" --model m \"b\"`: options between the captions (it used to fail: unrecognized arguments)."
    assert json.loads(_ok(cli["options anywhere"]()))["ranking"] == json.loads(_ok(cli["json"]()))["ranking"]


def test_several_images_in_one_call(cli, cli_tmp, pipe, chelsea_path):
    "`dsd-score a.png b.png captions...`: the leading image files are images (they used to be scored as captions); a JSON list."
    out = json.loads(_ok(cli["several images"]()))
    second = cli_tmp / "second.png"
    assert isinstance(out, list) and [o["image"] for o in out] == [str(chelsea_path), str(second)]
    api = DSDScorer(pipe, steps=STEPS).score([chelsea_path, second], CAPS)
    for o, row in zip(out, api):
        assert sorted(x["caption"] for x in o["ranking"]) == sorted(CAPS) and o["timesteps"] == reference_timesteps(STEPS).tolist()
        for x in o["ranking"]: assert abs(x["score"] - row[CAPS.index(x["caption"])].item()) < 1e-5
    single = json.loads(_ok(cli["json"]()))  # the first image ranks as it does alone
    assert [x["caption"] for x in out[0]["ranking"]] == [x["caption"] for x in single["ranking"]]
    blocks = _ok(cli["several images, tables"]()).strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"# image={chelsea_path}", f"# image={second}"]
    for b, o in zip(blocks, out):
        rows = _table("\n".join(b.splitlines()[1:]))
        assert [(c, round(s, 4)) for _, s, c in rows] == [(x["caption"], round(x["score"], 4)) for x in o["ranking"]]


def test_caption_naming_an_image_file_warns(cli, cli_tmp):
    "An image file after the captions is scored as a caption, with a one-line warning on stderr."
    r = cli["image among captions"]()
    out = json.loads(_ok(r))
    second = str(cli_tmp / "second.png")
    assert sorted(x["caption"] for x in out["ranking"]) == sorted([CAPS[0], second])
    assert r.stderr.strip().splitlines() == [f"dsd-score: warning: caption {second!r} is the name of an image file; images go before the captions"]


def test_dsd_scene_command_files(tmp_path):
    import os, subprocess, sys, shutil
    from pathlib import Path
    exe = Path(sys.executable).parent / "dsd-scene"
    exe = str(exe) if exe.exists() else shutil.which("dsd-scene")
    run = lambda *a: subprocess.run([exe, *map(str, a)], capture_output=True, text=True, timeout=300)
    r = run("--index", "2", "--out", tmp_path / "s.png", "--captions_out", tmp_path / "c.txt")
    assert r.returncode == 0, r.stderr
    caps = (tmp_path / "c.txt").read_text().splitlines()
    assert r.stdout.splitlines()[1:] == caps and len(caps) == 6
    import PIL.Image
    assert PIL.Image.open(tmp_path / "s.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "s.png"]  # no temporary files left
    (tmp_path / "d").mkdir()
    for args, msg in (((tmp_path / "s.png", "--captions_out", tmp_path / "s.png"), "would overwrite the captions"),
                      ((tmp_path / "no" / "s.png",), "does not exist; create it first"),
                      ((tmp_path / "s.txt",), "ending in .png, .jpg"),
                      ((tmp_path / "d",), "is a folder"),
                      ((tmp_path / "t.png", "--captions_out", tmp_path / "d"), "is a folder")):
        r = run("--out", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "c.txt").read_text().splitlines() == caps and not (tmp_path / "t.png").exists()
    for bad, msg in (("x.xpm", "ending in .png, .jpg"), ("x.eps", "ending in .png, .jpg"), ("x.pbm", "ending in .png, .jpg"),
                     ("x.png/", "ends in '/'")):  # formats Pillow cannot write, or that dsd-score cannot read back; a folder-like name
        r = run("--out", f"{tmp_path}/{bad}")  # (a Path would drop the trailing '/')
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not list(tmp_path.glob("x.*"))
    for args, msg in ((("--seed", "-1"), "seed must be an integer from 0"), (("--captions_out", ""), "--captions_out is empty")):
        r = run("--out", tmp_path / "y.png", *args)
        assert r.returncode == 2 and msg in r.stderr and not (tmp_path / "y.png").exists(), r.stderr
    if os.path.isdir("/proc"):  # a folder no one can create files in, root included
        r = run("--out", "/proc/s.png", "--captions_out", tmp_path / "c.txt")
        assert r.returncode == 2 and "cannot write '/proc/s.png'" in r.stderr and ".tmp" not in r.stderr, r.stderr
        assert (tmp_path / "c.txt").read_text().splitlines() == caps  # the image failed first: the captions file is untouched
    r = run("--out", tmp_path / "s.png", "--captions_out", os.devnull)
    assert r.returncode == 0 and not os.path.isfile(os.devnull)
    if os.path.exists("/dev/full"):  # the captions fail after the image is written: all or nothing
        r = run("--out", tmp_path / "z.png", "--captions_out", "/dev/full")
        assert r.returncode == 2 and "cannot write '/dev/full'" in r.stderr and not (tmp_path / "z.png").exists(), r.stderr
        old_png = (tmp_path / "s.png").read_bytes()
        r = run("--index", "5", "--out", tmp_path / "s.png", "--captions_out", "/dev/full")
        assert r.returncode == 2 and (tmp_path / "s.png").read_bytes() == old_png  # an image that was there is put back
        link = tmp_path / "nul.png"; link.symlink_to(os.devnull)  # a link to a device: kept, and the device too
        r = run("--out", link, "--captions_out", "/dev/full")
        assert r.returncode == 2 and link.is_symlink() and os.path.exists(os.devnull) and not os.path.isfile(os.devnull), r.stderr
        dangling = tmp_path / "d.png"; dangling.symlink_to(tmp_path / "target.png")  # the file made through the link goes, the link stays
        r = run("--out", dangling, "--captions_out", "/dev/full")
        assert r.returncode == 2 and dangling.is_symlink() and not (tmp_path / "target.png").exists(), r.stderr
