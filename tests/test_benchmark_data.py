"""The benchmark loaders (08a_benchmark_data) on records copied from the published files, on malformed and hostile
input, and on the small copies `write_sample` writes. CPU only, offline (HF_HUB_OFFLINE=1, see conftest)."""
import builtins, json, pickle, sys
from pathlib import Path

import pandas as pd
import numpy as np
import pytest

from dsd_nb.core import DSDInputError
from dsd_nb.inputs import ImageRef, load_image
from dsd_nb.benchmark_data import (BENCHMARKS, COMVG_COLUMNS, VQA_COLUMNS, VG_RELATION_SYMMETRIC, BenchmarkExamples, hf_dataset,
                                   load_aro_attribution, load_aro_relation, load_benchmark, load_clevr, load_comvg, load_jsonl,
                                   load_refcocog, load_sugarcrepe, load_vqa, load_winoground, macro_accuracy, missing_images,
                                   parse_triplet, read_plain_pickle, write_sample)

datasets = pytest.importorskip("datasets")

# records as published (issue 18; the VQA row is the first of Discffusion's data/vqa_text_test.csv)
COMVG_ROW = "1,a man is sitting at a table,\"man,sit,table\",\"('dog', 'sit', 'table')\",2358258,2357994,subject"
SUGARCREPE_REC = {"0": {"filename": "000000565045.jpg", "caption": "Blue bathroom with two white towels hanging by the shower.",
                        "negative_caption": "White bathroom with two blue towels hanging by the shower."}}
CLEVR_REC = {"CLEVR_val2_000138.png": [["On the right is a gray cylinder.", "On the left is a gray cylinder."],
                                       ["On the left is a purple sphere.", "On the right is a purple sphere."]]}
VQA_Q = "What baseball team is on the hat?"
VQA_ANSWERS = ["la", "light", "windows", "female", "behind clouds", "meat", "pitching", "cannot tell", "electric", "handlebars"]


def _vqa_csv(path, rows):
    pd.DataFrame(rows, columns=VQA_COLUMNS).to_csv(path, index=False)
    return path


def test_comvg_published_record(tmp_path):
    (tmp_path / "ComVG.csv").write_text(",".join(COMVG_COLUMNS) + "\n" + COMVG_ROW + "\n")
    ex = load_comvg(tmp_path / "ComVG.csv", images=tmp_path / "vg")
    assert len(ex) == 1 and isinstance(ex, BenchmarkExamples)
    e = ex[0]
    assert (e.id, e.subset, e.kinds, e.captions, e.direction) == ("comvg/1", "subject", ("subject",), ["a man is sitting at a table"], "t2i")
    assert [r.path for r in e.images] == [str(tmp_path / "vg" / "2358258.jpg"), str(tmp_path / "vg" / "2357994.jpg")]
    assert ex.info["missing"] == 2 and ex.info["images"] == 2
    # ComCLIP's copy adds sentence_id: read the same
    (tmp_path / "ComCLIP.csv").write_text(",".join(COMVG_COLUMNS + ["sentence_id"]) + "\n" + COMVG_ROW + ",17\n")
    assert load_comvg(tmp_path / "ComCLIP.csv", images=tmp_path / "vg")[0].captions == e.captions


def test_comvg_triplet_is_a_literal_never_eval(tmp_path, monkeypatch):
    real_eval = builtins.eval
    def guarded_eval(src, *a, **k):  # (pandas' namedtuples use eval for their own code: only the records' text is refused)
        if isinstance(src, str) and ("'table'" in src or "__import__" in src): raise AssertionError(f"eval was called on {src!r}")
        return real_eval(src, *a, **k)
    monkeypatch.setattr(builtins, "eval", guarded_eval)
    assert parse_triplet("('dog', 'sit', 'table')") == ("dog", "sit", "table")
    marker = tmp_path / "ran"
    hostile = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    (tmp_path / "c.csv").write_text(",".join(COMVG_COLUMNS) + "\n" + COMVG_ROW + "\n" +
                                    f'2,a dog,"dog,sit,table","{hostile}",1,2,object\n')
    with pytest.raises(DSDInputError, match=r"c\.csv: record line 3: neg_triplet must be a tuple of 3 strings"):
        load_comvg(tmp_path / "c.csv")
    assert not marker.exists()
    for bad in ("('dog', 'sit')", "[1, 2, 3]", "dog sit table", ""):
        with pytest.raises(DSDInputError, match="neg_triplet"): parse_triplet(bad)


def test_comvg_malformed_records(tmp_path):
    head = ",".join(COMVG_COLUMNS) + "\n"
    (tmp_path / "dup.csv").write_text(head + COMVG_ROW + "\n" + COMVG_ROW + "\n")
    with pytest.raises(DSDInputError, match=r"dup\.csv: record id 1: ids must be unique"): load_comvg(tmp_path / "dup.csv")
    (tmp_path / "kind.csv").write_text(head + COMVG_ROW.rsplit(",", 1)[0] + ",\n")
    with pytest.raises(DSDInputError, match=r"kind\.csv: record line 2: neg_value"): load_comvg(tmp_path / "kind.csv")
    (tmp_path / "cols.csv").write_text("id,sentence\n1,a man\n")
    with pytest.raises(DSDInputError, match="not in ComVG layout"): load_comvg(tmp_path / "cols.csv")


def test_sugarcrepe_published_record_and_bad_input(tmp_path):
    d = tmp_path / "data"; d.mkdir()
    (d / "replace_att.json").write_text(json.dumps(SUGARCREPE_REC))
    (d / "swap_att.json").write_text(json.dumps({"5": {**SUGARCREPE_REC["0"], "filename": "000000000139.jpg"}}))
    ex = load_sugarcrepe(d)
    assert [(e.id, e.subset) for e in ex] == [("sugarcrepe/replace_att/0", "replace_att"), ("sugarcrepe/swap_att/5", "swap_att")]
    assert ex[0].captions == [SUGARCREPE_REC["0"]["caption"], SUGARCREPE_REC["0"]["negative_caption"]]
    assert ex[0].images[0].path == str(d / "images" / "000000565045.jpg")  # no image folder there: the first default is named
    assert [str(m) for m in missing_images(ex)] == [str(d / "images" / "000000565045.jpg"), str(d / "images" / "000000000139.jpg")]
    assert "2 of 2 images missing (first: " in ex.summary()
    assert len(load_sugarcrepe(d / "swap_att.json")) == 1
    with pytest.raises(DSDInputError, match="no subset 'add_obj'.*its subsets: replace_att, swap_att"): load_sugarcrepe(d, subset="add_obj")
    (d / "add_att.json").write_text('{"0": {"filename": "a.jpg", "caption": "x"')
    with pytest.raises(DSDInputError, match=r"add_att\.json' is not valid JSON: .* at line 1, column"): load_sugarcrepe(d)
    (d / "add_att.json").write_text(json.dumps({"7": {"filename": "a.jpg", "caption": "x", "negative_caption": ""}}))
    with pytest.raises(DSDInputError, match=r"add_att\.json: record '7': 'negative_caption' must be non-empty text"): load_sugarcrepe(d)
    e = tmp_path / "empty"; e.mkdir(); (e / "add_att.json").write_text("{}")
    with pytest.raises(DSDInputError, match="holds no examples"): load_sugarcrepe(e)


def _sugar_mirror(tmp_path, name, true_label, feature):
    from PIL import Image
    caps = [[SUGARCREPE_REC["0"]["negative_caption"], SUGARCREPE_REC["0"]["caption"]]]  # the true one second: it must come first
    feats = dict(image=datasets.Image(), tested_labels=datasets.Sequence(datasets.Value("string")), true_label=feature)
    ds = datasets.Dataset.from_dict(dict(image=[Image.new("RGB", (16, 16))], tested_labels=caps, true_label=[true_label]),
                                    features=datasets.Features(feats))
    ds.save_to_disk(str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("how", ["index", "text", "class label"])
def test_sugarcrepe_mirror_true_label_forms(tmp_path, how):
    cap = SUGARCREPE_REC["0"]["caption"]
    label, feature = {"index": (1, datasets.Value("int64")), "text": (cap, datasets.Value("string")),
                      "class label": (0, datasets.ClassLabel(names=[cap, "other"]))}[how]
    ex = load_sugarcrepe(_sugar_mirror(tmp_path, "SugarCrepe_swap_att", label, feature))
    assert [(e.id, e.subset, e.captions[0]) for e in ex] == [("sugarcrepe/swap_att/0", "swap_att", cap)]
    assert load_image(ex[0].images[0]).size == (16, 16) and ex.info["missing"] == 0


def test_winoground_hf_row_and_jsonl(tmp_path):
    row = dict(id=0, caption_0="an old person kisses a young person", caption_1="a young person kisses an old person", tag="Object",
               secondary_tag="", num_main_preds=1, collapsed_tag="Object")
    from PIL import Image
    cols = {**{k: [v] for k, v in row.items()}, "image_0": [Image.new("RGB", (20, 10))], "image_1": [Image.new("RGB", (10, 20))]}
    datasets.Dataset.from_dict(cols).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    ex = load_winoground(tmp_path / "test-00000-of-00001.parquet")
    e = ex[0]
    assert (e.id, e.subset, e.group, e.truth, e.captions) == ("winoground/0", "Object", "", ((0, 0), (1, 1)), [row["caption_0"], row["caption_1"]])
    assert [load_image(i).size for i in e.images] == [(20, 10), (10, 20)]
    with pytest.raises(DSDInputError, match="holds its own images: give no image folder"):
        load_winoground(tmp_path / "test-00000-of-00001.parquet", images=tmp_path)
    (tmp_path / "examples.jsonl").write_text(json.dumps({**row, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1"}) + "\n\n")
    j = load_winoground(tmp_path)[0]
    assert (j.id, j.captions, [Path(i.path).name for i in j.images]) == (e.id, e.captions, ["ex_0_img_0.png", "ex_0_img_1.png"])
    (tmp_path / "examples.jsonl").write_text(json.dumps({**row, "caption_1": None}) + "\n")
    with pytest.raises(DSDInputError, match=r"examples\.jsonl: record line 1: 'caption_1' must be non-empty text"): load_winoground(tmp_path)
    (tmp_path / "examples.jsonl").write_text("{not json\n")
    with pytest.raises(DSDInputError, match=r"examples\.jsonl' line 1 is not valid JSON"): load_winoground(tmp_path)


def test_aro_vg_published_layout_and_crop(tmp_path):
    rel = [dict(image_path="2316849.jpg", bbox_x=4, bbox_y=2, bbox_w=20, bbox_h=10, true_caption="the horse is eating the grass",
                false_caption="the grass is eating the horse", relation_name="eating")]
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(rel))
    att = [dict(rel[0], attributes=["white", "paved"], true_caption="the paved road and the white house",
                false_caption="the white road and the paved house")]
    del att[0]["relation_name"]
    (tmp_path / "visual_genome_attribution.json").write_text(json.dumps(att))
    (tmp_path / "images").mkdir()
    from PIL import Image
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "2316849.jpg")
    r, a = load_aro_relation(tmp_path)[0], load_aro_attribution(tmp_path)[0]
    assert (r.id, r.subset, r.group, r.captions[0]) == ("aro_relation/0", "vg_relation", "eating", "the horse is eating the grass")
    assert (a.id, a.subset, a.group, a.captions[0]) == ("aro_attribution/0", "vg_attribution", "white|paved", "the paved road and the white house")
    assert r.images[0].box == (4, 2, 24, 12) and load_image(r.images[0]).size == (20, 10)  # cropped to (x, y, x + w, y + h)
    for key, value, msg in (("bbox_w", "wide", "bbox_x, bbox_y, bbox_w, bbox_h must be numbers"), ("true_caption", 3, "'true_caption'")):
        (tmp_path / "bad.json").write_text(json.dumps([rel[0], dict(rel[0], **{key: value})]))
        with pytest.raises(DSDInputError, match=rf"bad\.json: record index 1: {msg}"): load_aro_relation(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps([dict(att[0], attributes=["white"])]))
    with pytest.raises(DSDInputError, match="'attributes' must be a pair"): load_aro_attribution(tmp_path / "bad.json")


def test_aro_symmetric_relations_and_macro_accuracy():
    for r in ("adjusting", "wrapped in", "by", "of", "near", "next to", "with", "beside", "on the side of", "around"):
        assert r in VG_RELATION_SYMMETRIC
    for r in ("on", "wearing", "holding", "eating", "riding"): assert r not in VG_RELATION_SYMMETRIC
    assert len(VG_RELATION_SYMMETRIC) == 157  # as the notebook lists them (no repeats)
    from dsd_nb.evaluate import RankingExample
    ex = [RankingExample(["i.jpg"], ["t", "f"], subset="vg_attribution", group=g) for g in ["a|b"] * 25 + ["c|d"] * 24]
    m = macro_accuracy(ex, [True] * 20 + [False] * 5 + [True] * 24)
    assert m["macro"] == 0.8 and m["left_out"] == ["c|d"]  # pairs with fewer than 25 examples are left out
    with pytest.raises(DSDInputError, match="3 results for 49 examples"): macro_accuracy(ex, [True] * 3)


def test_vqa_published_record(tmp_path):
    row = dict(zip(VQA_COLUMNS, [f"{VQA_Q} la", "108327"] + [f"{VQA_Q} {a}" for a in VQA_ANSWERS[1:]]))
    odd = dict(row, sentence="Could this be a CSA delivery? no", neg_sentence_3="Could this be a CSA delivery? none",
               neg_sentence_4="Could this be a CSA delivery? 000")
    ex = load_vqa(_vqa_csv(tmp_path / "vqa_text_test.csv", [row, odd]))
    assert [(e.id, e.subset) for e in ex] == [("vqa/0", "vqa"), ("vqa/1", "vqa")]
    assert ex[0].captions == [f"{VQA_Q} {a}" for a in VQA_ANSWERS]
    assert ex[1].captions[3:5] == ["Could this be a CSA delivery? none", "Could this be a CSA delivery? 000"]  # text stays text
    assert Path(ex[0].images[0].path) == tmp_path / "images" / "COCO_val2014_000000108327.jpg"
    _vqa_csv(tmp_path / "bad.csv", [row, dict(row, pos_image_id="x1")])
    with pytest.raises(DSDInputError, match=r"bad\.csv: record line 3: pos_image_id must be a COCO image id"): load_vqa(tmp_path / "bad.csv")
    _vqa_csv(tmp_path / "bad.csv", [dict(row, neg_sentence_9="")])
    with pytest.raises(DSDInputError, match=r"bad\.csv: record line 2: 'neg_sentence_9' must be non-empty text"): load_vqa(tmp_path / "bad.csv")
    pd.DataFrame(columns=VQA_COLUMNS).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DSDInputError, match="holds no examples"): load_vqa(tmp_path / "empty.csv")


def _refcocog(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    refs = [dict(ref_id=10 + i, ann_id=i, image_id=100 + i, split="val" if i % 2 else "train", category_id=1, file_name=f"x_{i}.jpg",
                 sent_ids=[2 * i, 2 * i + 1], sentences=[dict(sent_id=2 * i + j, raw=f"thing {i} view {j}", sent=f"thing {i} view {j}",
                                                              tokens=["thing", str(i)]) for j in range(2)]) for i in range(n)]
    (folder / "refs(google).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(json.dumps(dict(images=[dict(id=100 + i, file_name=f"COCO_train2014_{100 + i:012d}.jpg")
                                                                   for i in range(n)], annotations=[], categories=[])))
    return folder


def test_refcocog_build_is_seeded_and_draws_from_other_refs(tmp_path):
    d = _refcocog(tmp_path / "refcocog")
    a, b, c = load_refcocog(d), load_refcocog(d / "refs(google).p"), load_refcocog(d, seed=1)
    assert [e.id for e in a] == [f"refcocog/{i}" for i in range(8)] and [e.subset for e in a[:4]] == ["train", "train", "val", "val"]
    assert [e.captions for e in a] == [e.captions for e in b] and [e.captions for e in a] != [e.captions for e in c]
    for e in a:
        own = e.captions[0].split(" view")[0]
        assert len(e.captions) == 10 and not any(n.startswith(own + " ") for n in e.captions[1:])  # never the positive's own ref
    assert Path(a[0].images[0].path) == d / "images" / "train2014" / "COCO_train2014_000000000100.jpg"
    assert [e.id for e in load_refcocog(d, subset="val", limit=3)] == ["refcocog/2", "refcocog/3", "refcocog/6"]


def test_hostile_pickle_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    class Hostile:
        def __reduce__(self): return (Path.touch, (marker,))
    (tmp_path / "h.p").write_bytes(pickle.dumps([{"ref_id": 1}, Hostile()]))
    with pytest.raises(DSDInputError, match=r"h\.p' was refused: it names pathlib"): read_plain_pickle(tmp_path / "h.p")
    assert not marker.exists()
    d = _refcocog(tmp_path / "refcocog")
    (d / "refs(google).p").write_bytes(pickle.dumps([{"ref_id": 1}, Hostile()], protocol=2))
    with pytest.raises(DSDInputError, match="RefCOCOg refs file .* was refused"): load_refcocog(d)
    assert not marker.exists()
    import os
    (tmp_path / "g.p").write_bytes(pickle.dumps(os.system, protocol=0))  # a bare global: refused too
    with pytest.raises(DSDInputError, match="was refused: it names"): read_plain_pickle(tmp_path / "g.p")
    (tmp_path / "t.p").write_bytes(b"not a pickle")
    with pytest.raises(DSDInputError, match=r"t\.p' is not a pickle file"): read_plain_pickle(tmp_path / "t.p")
    (tmp_path / "c.p").write_text("ref_id,sent\n1,a man\n")  # a CSV given as the refs file
    with pytest.raises(DSDInputError, match=r"c\.p' is not a pickle file"): read_plain_pickle(tmp_path / "c.p")
    (tmp_path / "cut.p").write_bytes(pickle.dumps([{"ref_id": 1}], protocol=2)[:-3])  # cut short
    with pytest.raises(DSDInputError, match=r"cut\.p' is not a (complete )?pickle file"): read_plain_pickle(tmp_path / "cut.p")


def test_clevr_published_record_and_bad_pairs(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "spatial.json").write_text(json.dumps(CLEVR_REC))
    ex = load_clevr(tmp_path)
    assert [e.id for e in ex] == ["clevr/spatial/CLEVR_val2_000138.png/0", "clevr/spatial/CLEVR_val2_000138.png/1"]
    assert ex[0].captions == ["On the right is a gray cylinder.", "On the left is a gray cylinder."] and ex[0].subset == "spatial"
    assert [e.id for e in load_clevr(tmp_path / "captions" / "spatial.json")] == [e.id for e in ex]
    assert Path(ex[0].images[0].path) == tmp_path / "images" / "CLEVR_val2_000138.png"
    # the published captions/ folder holds other JSON files too (CLEVR_scenes.json, questions): only the 7 subtasks are read
    (tmp_path / "captions" / "CLEVR_scenes.json").write_text(json.dumps({"scenes": [{"objects": []}]}))
    (tmp_path / "captions" / "CLEVR_questions.json").write_text(json.dumps({"CLEVR_x.png": [["a question?", "another?"]]}))
    assert [e.id for e in load_clevr(tmp_path)] == [e.id for e in ex]
    (tmp_path / "only").mkdir(); (tmp_path / "only" / "CLEVR_scenes.json").write_text("{}")
    with pytest.raises(DSDInputError, match="no CLEVR subtask files .* expected pair_binding_size.json"): load_clevr(tmp_path / "only")
    (tmp_path / "captions" / "recognition_color.json").write_text(json.dumps({"CLEVR_x.png": [["only one"]]}))
    with pytest.raises(DSDInputError, match=r"recognition_color\.json: record 'CLEVR_x\.png' pair 0"): load_clevr(tmp_path)


def test_jsonl_format(tmp_path):
    rows = [dict(id="a", image="dog.jpg", captions=["a cat", "a dog"], true=1, kinds=["animal"]),
            dict(id=7, images=["1.jpg", "2.jpg", "3.jpg"], caption="a red car", subset="cars", group="g"),
            dict(images=["x.jpg", "y.jpg"], captions=["p", "q"], truth=[[0, 0], [1, 1]]),
            dict(id="w", image="images/0.png", captions=["t", "n1", "n2"], kinds=["positive", "subject", "object"])]  # write_i2t's rows
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = load_jsonl(tmp_path / "mine.jsonl")
    assert [(e.id, e.direction, e.subset, e.group) for e in ex] == [("jsonl/a", "i2t", "(no subset)", ""), ("jsonl/7", "t2i", "cars", "g"),
                                                                  ("jsonl/line 3", "group", "(no subset)", ""), ("jsonl/w", "i2t", "(no subset)", "")]
    assert ex[0].captions == ["a dog", "a cat"] and ex[0].kinds == ("animal",) and ex[3].kinds == ("subject", "object")
    assert ex[2].truth == ((0, 0), (1, 1)) and ex[1].images[0].path == str(tmp_path / "1.jpg")
    for bad, msg in ((dict(image="a.jpg", captions=["x"]), "a ranking example needs"), (dict(image="a.jpg", captions=["x", "y"], true=2), "'true'"),
                     (dict(captions=["x", "y"]), "needs 'image'"), ([1, 2], "is a list"), (dict(images=["a"], captions=["b"], truth=[[0, 1]]), "truth")):
        (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DSDInputError, match=rf"bad\.jsonl: record line 2: .*{msg}"): load_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "dup.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(DSDInputError, match="ids must be unique; 'a' repeats"): load_jsonl(tmp_path / "dup.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DSDInputError, match="holds no examples"): load_jsonl(tmp_path / "empty.jsonl")


def test_offline_hub_id_says_how_to_get_the_data(tmp_path):
    for load in (lambda: hf_dataset("dsd-nb-tests/no-such-dataset"), lambda: load_winoground("dsd-nb-tests/no-such-winoground"),
                 lambda: load_benchmark("aro_coco_order", "dsd-nb-tests/no-such-order")):
        with pytest.raises(DSDInputError) as e: load()
        msg = str(e.value)
        assert "\n" not in msg and "is no local file or folder" in msg and "Hugging Face hub" in msg and "save_to_disk('DIR')" in msg and "give DIR as the data" in msg
    with pytest.raises(DSDInputError, match="does not exist"): load_winoground(tmp_path / "nowhere")


def test_without_datasets_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(DSDInputError, match=r'needs the `datasets` package: pip install "dsd_nb\[hf\]"'):
        load_winoground("facebook/winoground")
    (tmp_path / "c.csv").write_text(",".join(COMVG_COLUMNS) + "\n" + COMVG_ROW + "\n")
    assert len(load_comvg(tmp_path / "c.csv")) == 1  # the file-based loaders never need it


def test_registry_and_dispatch(tmp_path):
    assert list(BENCHMARKS) == ["comvg", "sugarcrepe", "winoground", "aro_relation", "aro_attribution", "aro_coco_order", "aro_flickr_order",
                                "vqa", "refcocog", "clevr", "scene", "jsonl"]
    assert all(b.description and b.metric for b in BENCHMARKS.values())
    with pytest.raises(DSDInputError, match="unknown benchmark 'sugar'; benchmarks: comvg, sugarcrepe, winoground, aro_relation"):
        load_benchmark("sugar")
    ex = load_benchmark("scene", subset="t2i", limit=2)
    assert [e.direction for e in ex] == ["t2i", "t2i"] and ex.name == "scene"
    with pytest.raises(DSDInputError, match="limit must be a positive integer"): load_benchmark("scene", limit=0)


@pytest.mark.parametrize("name", ["comvg", "sugarcrepe", "winoground", "aro_relation", "aro_attribution", "aro_coco_order",
                                  "aro_flickr_order", "vqa", "refcocog", "clevr", "jsonl"])
def test_samples_load_with_every_image(tmp_path, name):
    p = write_sample(name, tmp_path / name, n=2)
    ex = load_benchmark(name, p["data"], p["images"])
    assert ex.info["missing"] == 0 and len({e.id for e in ex}) == len(ex) >= 2
    assert all(load_image(im).size[0] >= 8 for im in ex[0].images)
    for other in ("mirror", "files"):  # the other copy holds the same captions and the same pixels (the same image files)
        if other not in p: continue
        ex2 = load_benchmark(name, p[other])
        assert [e.captions for e in ex2] == [e.captions for e in ex]
        for a, b in zip(ex[:2], ex2[:2]):
            assert [np.asarray(load_image(i)).tolist() for i in a.images] == [np.asarray(load_image(i)).tolist() for i in b.images]
    with pytest.raises(DSDInputError, match="exists"): write_sample(name, tmp_path / name)


def test_sample_positives_are_the_scene_worlds_true_captions(tmp_path):
    from dsd_nb.scenes import sample_examples
    truth = [c.text() for _, c in sample_examples("test", 3, 0, p_single=0.0)]
    p = write_sample("sugarcrepe", tmp_path / "s", n=3)
    for name in ("add_att", "swap_obj"):
        ex = load_sugarcrepe(p["data"], subset=name)
        assert [e.captions[0] for e in ex] == truth and all(e.captions[1] != e.captions[0] for e in ex)
    vqa = load_benchmark("vqa", *write_sample("vqa", tmp_path / "v", n=3).values())
    assert [e.captions[0].removeprefix("What does the picture show? ") for e in vqa] == truth
    assert all(len(set(e.captions)) == 10 for e in vqa)


def test_missing_images_are_counted_once_and_named(tmp_path):
    p = write_sample("comvg", tmp_path / "c", n=2)
    ex = load_comvg(p["data"])
    gone = sorted(Path(p["images"]).glob("*.png"))[:2]
    for g in gone: g.unlink()
    miss = missing_images(ex)
    assert sorted(Path(m.path) for m in miss) == gone and all(isinstance(m, ImageRef) for m in miss)
    info = ex.info
    assert info["missing"] == 2 and set(info["first_missing"]) == {str(g) for g in gone}
    assert f"2 of {info['images']} images missing" in ex.summary()


def test_broken_parquet_or_lfs_pointer_is_one_line(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "data.parquet").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(DSDInputError, match=r"data\.parquet' could not be read as a dataset .*Git LFS pointer"):
        hf_dataset(tmp_path / "data.parquet")
    with pytest.raises(DSDInputError, match="could not be read as a dataset"):
        load_benchmark("aro_coco_order", tmp_path)
