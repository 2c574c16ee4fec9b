"Scene world, many-case checks: truth of captions and hard negatives false by construction (single cases live in 06_scenes)."
import random
import pytest
from dsd_nb.scenes import INVERSE, NEG_KINDS, Caption, is_true, relation, negative, negative_scene, sample_scene, describe


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
