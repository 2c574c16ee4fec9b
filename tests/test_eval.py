"""`dsd-eval` end to end on a small copy of every benchmark's published layout (scene-world renders, the default
model): official metric names, bad data as one-line errors, a killed run resumed to the uninterrupted result, and two
processes (`accelerate launch`) giving the one-process metrics."""
import contextlib, io, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest

from dsd_nb.benchmark_data import BENCHMARKS, write_sample, _SAMPLES
from dsd_nb.cli import dsd_eval

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
METRICS = {"accuracy": {"accuracy"}, "precision@1": {"precision@1"}, "recall@1,5": {"R@1", "R@5"},
           "macro_accuracy": {"accuracy", "macro_accuracy"}, "winoground": {"text", "image", "group"}}


def _exe(name):
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else shutil.which(name)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = dsd_eval(argv)
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def _args(name, paths):
    a = [name, "--data", str(paths["data"])]
    return a + (["--images", str(paths["images"])] if paths.get("images") else [])


@pytest.mark.parametrize("name", sorted(_SAMPLES))
def test_every_benchmark_end_to_end(tmp_path, name):
    paths = write_sample(name, tmp_path / "data", n=2)
    code, out, err = _run(_args(name, paths) + ["--steps", "1", "--out", str(tmp_path / "run"), "--json"])
    assert code == 0, err
    printed = json.loads(out)  # strict JSON (no NaN): what metrics.json holds
    rows = printed["metrics"]
    assert {r["metric"] for r in rows} == METRICS[BENCHMARKS[name].metric]
    assert {r["mode"] for r in rows} == {"dsd", "attention", "diffusion_itm"}
    assert all(0 <= r["value"] <= 1 and r["n"] > 0 for r in rows if r["value"] is not None)
    if name == "aro_attribution":  # 2 examples: no attribute pair reaches 25, so the macro accuracy has no value, and says why
        macro = [r for r in rows if r["metric"] == "macro_accuracy"]
        assert macro and all(r["value"] is None and "no attribute pair has at least 25" in r["note"] for r in macro)
    else: assert all(r["value"] is not None for r in rows)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == printed and saved["skipped"] == 0
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000 and "| all |" in (tmp_path / "run" / "metrics.md").read_text()


def test_bad_data_one_line_errors(tmp_path):
    paths = write_sample("comvg", tmp_path / "data", n=2)
    code, _, err = _run(["no_such_benchmark"])
    assert code == 2 and "comvg" in err and "winoground" in err
    code, _, err = _run(["comvg", "--data", str(tmp_path / "nope.csv")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    gone = sorted(Path(paths["images"]).iterdir())[0]
    kept = gone.read_bytes(); gone.unlink()
    code, _, err = _run(_args("comvg", paths) + ["--steps", "1", "--out", str(tmp_path / "r1")])
    assert code == 2 and "missing images" in err and gone.name in err and "--skip_missing" in err
    code, out, err = _run(_args("comvg", paths) + ["--steps", "1", "--out", str(tmp_path / "r2"), "--skip_missing"])
    assert code == 0, err
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["skipped"] > 0 and "skipped for missing images" in out
    n_first = len(_records(tmp_path / "r2"))
    gone.write_bytes(kept)   # the missing image fetched: the same command scores the examples skipped before, losing none
    code, out, err = _run(_args("comvg", paths) + ["--steps", "1", "--out", str(tmp_path / "r2"), "--skip_missing"])
    assert code == 0, err
    saved = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert saved["skipped"] == 0 and len(_records(tmp_path / "r2")) > n_first
    assert {r["n"] for r in saved["metrics"] if r["subset"] == "all"} == {len(_records(tmp_path / "r2"))}
    code, _, err = _run(_args("comvg", paths) + ["--steps", "2", "--out", str(tmp_path / "r2"), "--skip_missing"])
    assert code == 2 and "other settings" in err and "--overwrite" in err
    code, out, err = _run(_args("vqa", write_sample("vqa", tmp_path / "vqa", n=2)) + ["--prune", "2,3", "--out", str(tmp_path / "r3"), "--json"])
    assert code == 0, err   # keeping 3 candidates: R@1 is reported, R@5 has no value and says why
    rows = json.loads(out)["metrics"]
    assert all(r["value"] is not None for r in rows if r["metric"] == "R@1")
    assert all(r["value"] is None and "pruning kept fewer than 5" in r["note"] for r in rows if r["metric"] == "R@5")



@pytest.mark.parametrize("prune, says", [("10,3", "FIRST .* from 1 to 9"), ("2,0", "KEEP .* at least 1"), ("x", "FIRST,KEEP")])
def test_prune_checked_before_the_data_loads(tmp_path, prune, says):
    "A wrong --prune is named before anything loads: here the data does not even exist, and that is not what is said."
    code, _, err = _run(["vqa", "--data", str(tmp_path / "nope.csv"), "--prune", prune])
    assert code == 2 and "--prune" in err and "nope.csv" not in err
    assert __import__("re").search(says, err), err


def test_default_images_spelled_out_resumes(tmp_path):
    "The images folder a run used is recorded, not how it was given: naming the default folder resumes the same run."
    paths = write_sample("comvg", tmp_path / "data", n=2)
    run = ["--steps", "1", "--limit", "1", "--out", str(tmp_path / "run")]
    code, _, err = _run(["comvg", "--data", str(paths["data"])] + run)
    assert code == 0, err
    code, _, err = _run(_args("comvg", paths) + run)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["images"] == str(Path(paths["images"]).resolve())


def test_missing_images_refused_before_the_model_loads(tmp_path):
    paths = write_sample("comvg", tmp_path / "data", n=2)
    next(Path(paths["images"]).glob("*.png")).unlink()
    code, _, err = _run(_args("comvg", paths) + ["--model", str(tmp_path / "no_such_model")])
    assert code == 2 and "missing images" in err and "no_such_model" not in err


def test_scene_world_per_kind(tmp_path):
    "The built-in scene world needs no files; beside accuracy per direction it reports pairwise accuracy per hard-negative kind."
    code, out, err = _run(["scene", "--limit", "3", "--steps", "1", "--out", str(tmp_path / "run"), "--json"])
    assert code == 0, err
    rows = json.loads(out)["metrics"]
    kinds = [r for r in rows if r["metric"] == "pairwise_accuracy" and r["mode"] == "dsd"]
    assert {r["subset"].split()[0] for r in kinds} == {"i2t", "t2i"} and len(kinds) >= 6
    assert all(0 <= r["value"] <= 1 and r["low"] <= r["value"] <= r["high"] for r in kinds)
    n_acc = {r["n"] for r in rows if r["metric"] == "accuracy" and r["subset"] == "all"}
    assert n_acc == {3}   # --limit counts examples (a scene gives one per direction)


def _jsonl_group(tmp_path, name, captions, truth):
    from PIL import Image
    for c, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        if not (tmp_path / f"{c}.png").exists(): Image.new("RGB", (64, 64), rgb).save(tmp_path / f"{c}.png")
    (tmp_path / name).write_text(json.dumps(dict(id="g", images=["red.png", "blue.png"], captions=captions, truth=truth)) + "\n")
    return tmp_path / name


def test_group_truth_is_used_and_an_edited_file_is_scored_again(tmp_path):
    "A JSONL group is judged by its truth (not the diagonal); a rerun after the file changed scores the changed example again."
    diag = _jsonl_group(tmp_path, "a.jsonl", ["a red square", "a blue square"], [[0, 0], [1, 1]])
    swap = _jsonl_group(tmp_path, "b.jsonl", ["a blue square", "a red square"], [[0, 1], [1, 0]])
    run = lambda data, out, *more: _run(["jsonl", "--data", str(data), "--steps", "1", "--out", str(tmp_path / out), "--json", *more])
    (ca, oa, ea), (cb, ob, eb) = run(diag, "ra"), run(swap, "rb")
    assert ca == cb == 0, ea + eb
    value = lambda out: {(r["metric"], r["mode"]): r["value"] for r in json.loads(out)["metrics"]}
    assert value(oa) == value(ob)   # the same pairs, the same outcome, whichever way the captions are listed
    old = [r["key"] for r in _records(tmp_path / "ra").values()]
    shutil.copy(swap, diag)          # the file edited in place, same id: its example is scored again, not resumed
    code, out, err = run(diag, "ra")
    assert code == 0, err
    assert [r["key"] for r in _records(tmp_path / "ra").values()] == [r["key"] for r in _records(tmp_path / "rb").values()] != old
    assert value(out) == value(ob)


def test_damaged_part_is_scored_again_and_overwrite_starts_over(tmp_path):
    paths = write_sample("vqa", tmp_path / "data", n=3)
    args = _args("vqa", paths) + ["--steps", "2", "--batch", "1", "--prune", "1,3", "--out", str(tmp_path / "run"), "--json"]
    code, first, err = _run(args)
    assert code == 0, err
    parts = sorted((tmp_path / "run" / "results").glob("part-*.jsonl"))
    for p in parts:  # strict JSON lines: a pruned candidate is null, never NaN
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {p}"))
    parts[0].write_text(parts[0].read_text()[:40])   # damaged outside dsd_nb
    (tmp_path / "run" / "done.json").unlink()
    code, again, err = _run(args)
    assert code == 0 and "damaged" in err and json.loads(again) == json.loads(first)
    bogus = json.loads(parts[1].read_text()); bogus["scores"]["dsd"] = [[0.0] + [1.0] * 9]
    parts[1].write_text(json.dumps(bogus) + "\n"); (tmp_path / "run" / "done.json").unlink()
    code, over, err = _run(args + ["--overwrite"])   # same settings, unfinished: --overwrite scores everything again
    assert code == 0, err
    assert json.loads(over) == json.loads(first)

def _records(folder):
    recs = {}
    for p in sorted((folder / "results").glob("part-*.jsonl")):
        for line in p.read_text().splitlines(): r = json.loads(line); recs[r["id"]] = r
    return recs


def _same_results(a, b):
    ra, rb = _records(a), _records(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        for m in ra[k]["scores"]:
            flat = lambda S: [x for row in S for x in row]
            assert max(abs(x - y) for x, y in zip(flat(ra[k]["scores"][m]), flat(rb[k]["scores"][m]))) < 1e-5
    ma = json.loads((a / "metrics.json").read_text())["metrics"]
    mb = json.loads((b / "metrics.json").read_text())["metrics"]
    assert [(r["subset"], r["metric"], r["mode"], r["value"], r["n"]) for r in ma] == \
           [(r["subset"], r["metric"], r["mode"], r["value"], r["n"]) for r in mb]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    paths = write_sample("comvg", tmp_path / "data", n=3)
    args = _args("comvg", paths) + ["--steps", "2"]
    code, _, err = _run(args + ["--out", str(tmp_path / "whole"), "--batch", "4"])
    assert code == 0, err
    cmd = [_exe("dsd-eval")] + args + ["--out", str(tmp_path / "cut"), "--batch", "1"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list((tmp_path / "cut" / "results").glob("part-*.jsonl")) and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGTERM); _, err = p.communicate(timeout=120)
    parts = list((tmp_path / "cut" / "results").glob("part-*.jsonl"))
    assert p.returncode == 130 and b"run the same command again" in err, err
    assert 1 <= len(parts) < 9 and not (tmp_path / "cut" / "done.json").exists()
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    _same_results(tmp_path / "whole", tmp_path / "cut")


def test_two_processes_give_the_one_process_results(tmp_path):
    paths = write_sample("comvg", tmp_path / "data", n=2)
    args = _args("comvg", paths) + ["--steps", "2", "--batch", "2"]
    code, _, err = _run(args + ["--out", str(tmp_path / "one")])
    assert code == 0, err
    two = subprocess.run([_exe("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519",
                          _exe("dsd-eval")] + args + ["--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    _same_results(tmp_path / "one", tmp_path / "two")
    assert two.stdout.count("**comvg**") == 1   # the main process alone prints


def test_wrong_images_folder_is_named(tmp_path):
    "A mistyped --images is named as such (not as every image missing); all images missing is an error even with --skip_missing."
    paths = write_sample("comvg", tmp_path / "data", n=2)
    base = ["comvg", "--data", str(paths["data"]), "--steps", "1", "--out", str(tmp_path / "run")]
    code, _, err = _run(base + ["--images", str(tmp_path / "nope")])
    assert code == 2 and "the images folder" in err and "does not exist" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _run(base + ["--images", str(paths["data"])])
    assert code == 2 and "is a file, not a folder" in err, err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(base + ["--images", str(tmp_path / "empty"), "--skip_missing"])
    assert code == 2 and "so there is nothing to score" in err, err
    first = err.split("(first: ", 1)[1].split(")", 1)[0].split(", ")
    assert len(first) == len(set(first))  # each missing file named once
    assert not (tmp_path / "run").exists()
