"Scene world: truth of captions, hard negatives false by construction, splits, ComVG layout, detector."
import json, random
import numpy as np
import pytest
from dsd_nb.core import DSDInputError
from dsd_nb.scenes import (NEG_KINDS, HELD_OUT_PAIRS, INVERSE, Caption, Phrase, Scene, Obj, is_true, relation, negative,
                           negative_scene, sample_scene, describe, sample_examples, render, detect, write_comvg, read_comvg,
                           write_i2t, scene_example, split_allowed, COMVG_COLUMNS)


def test_exactly_one_relation_holds_and_inverse_is_true():
    rng = random.Random(0)
    for _ in range(300):
        s = sample_scene(rng, 2)
        a, b = s.objects
        assert relation(b, a) == INVERSE[relation(a, b)]
        c = describe(s, rng)
        assert is_true(c, s)
        inv = Caption(c.object, INVERSE[c.relation], c.subject)
        assert is_true(inv, s), "subject/object swapped with the inverse relation describes the same scene"


@pytest.mark.parametrize("kind", NEG_KINDS)
def test_negative_captions_are_false_and_of_their_kind(kind):
    rng, made = random.Random(f"neg-{kind}"), 0
    for _ in range(300):
        s = sample_scene(rng, 2); c = describe(s, rng)
        n = negative(c, s, kind, rng)
        if n is None: continue
        made += 1
        assert not is_true(n, s)
        if kind == "subject": assert n.object == c.object and n.relation == c.relation and n.subject != c.subject
        if kind == "object": assert n.subject == c.subject and n.relation == c.relation and n.object != c.object
        if kind == "relation": assert (n.subject, n.object) == (c.subject, c.object) and n.relation != c.relation
        if kind == "order": assert (n.subject, n.object, n.relation) == (c.object, c.subject, c.relation)
        if kind == "attribute_swap": assert (n.subject.colour, n.object.colour) == (c.object.colour, c.subject.colour)
    assert made > 200


@pytest.mark.parametrize("kind", NEG_KINDS)
def test_negative_scenes_make_the_caption_false(kind):
    rng, made = random.Random(f"nscene-{kind}"), 0
    for _ in range(200):
        s = sample_scene(rng, 2); c = describe(s, rng)
        ns = negative_scene(c, s, kind, rng)
        if ns is None: continue
        made += 1
        assert is_true(c, s) and not is_true(c, ns)
    assert made > 100


def test_splits_are_reproducible_and_compgen_is_held_out():
    pre = sample_examples("pretrain", 400, seed=0)
    assert sample_examples("pretrain", 20, seed=0) == pre[:20]
    assert sample_examples("pretrain", 20, seed=1) != pre[:20]
    assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for s, _ in pre for o in s.objects)
    cg = sample_examples("compgen", 100, seed=0)
    assert all(any((o.colour, o.shape) in HELD_OUT_PAIRS for o in s.objects) for s, _ in cg)
    with pytest.raises(DSDInputError, match="unknown split"): split_allowed("train")


def test_render_is_deterministic_and_sized():
    s = sample_examples("test", 1)[0][0]
    a, b = np.asarray(render(s, 64)), np.asarray(render(s, 64))
    assert a.shape == (64, 64, 3) and (a == b).all()
    with pytest.raises(DSDInputError): render(s, 16)


def test_detector_reads_rendered_scenes():
    rng, hits, total = random.Random(11), 0, 0
    for _ in range(120):
        s = sample_scene(rng, rng.choice([1, 2]))
        det = detect(render(s, 64))
        for o in s.objects:
            total += 1; hits += any(d.colour == o.colour and d.shape == o.shape for d in det)
    assert hits / total >= 0.97
    assert detect(render(Scene(()), 64)) == []


def test_comvg_and_i2t_files(tmp_path):
    write_comvg(tmp_path / "cv", "test", n=6)
    df = read_comvg(tmp_path / "cv" / "comvg.csv")
    assert list(df.columns[:7]) == COMVG_COLUMNS and len(df) >= 6 * 4
    assert all((tmp_path / "cv" / "images" / f"{i}.png").exists() for i in set(df.pos_image_id) | set(df.neg_image_id))
    with pytest.raises(DSDInputError, match="exists"): write_comvg(tmp_path / "cv", "test", n=2)
    write_i2t(tmp_path / "i2t", "val", n=4)
    rows = [json.loads(l) for l in (tmp_path / "i2t" / "i2t.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["kinds"][0] == "positive" and len(r["captions"]) == len(r["kinds"]) for r in rows)
    bad = tmp_path / "bad.csv"; bad.write_text("a,b\n1,2\n")
    with pytest.raises(DSDInputError, match="ComVG layout"): read_comvg(bad)


def test_scene_example_and_command(tmp_path, monkeypatch):
    scene, cap, negs = scene_example("test", 2)
    assert is_true(cap, scene) and len(negs) == 5 and not any(is_true(c, scene) for _, c in negs)
    with pytest.raises(DSDInputError): scene_example("test", -1)


def test_scene_example_and_render_bounds():
    from dsd_nb.scenes import scene_example, render, MAX_INDEX
    from dsd_nb.core import DSDInputError
    with pytest.raises(DSDInputError, match="index must be"): scene_example("test", MAX_INDEX)
    scene, _, _ = scene_example("test", 0)
    with pytest.raises(DSDInputError, match="32 to 2048"): render(scene, 5000)
