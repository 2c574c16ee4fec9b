"""inputs and captions, many-case and through the scorer: every PIL mode becomes RGB (transparent pixels white), in
memory and from files; bad files and empty captions are refused by the scorer; long captions warn with the number of
dropped tokens; non-ASCII captions score. Single cases of `load_image`, `images_to_tensor` and `check_captions` live in
01_inputs."""
import warnings
import numpy as np
import PIL.Image
import pytest
import torch

from dsd_nb.core import DSDInputError
from dsd_nb.inputs import to_rgb, load_image, check_captions
from dsd_nb.scoring import DSDScorer, CaptionTruncatedWarning, encode_captions


# ----------------------------------------------------------------------------- bad image files

def test_bad_files_through_the_scorer(tmp_path, pipe):
    good = tmp_path / "good.png"; PIL.Image.new("RGB", (16, 16), "red").save(good)
    with pytest.raises(DSDInputError, match="does not exist"):
        DSDScorer(pipe, steps=2).score([good, tmp_path / "missing.png"], ["a cat"])


# ----------------------------------------------------------------------------- PIL modes

def _two_halves(mode, left, right, size=(16, 8)):
    im = PIL.Image.new(mode, size, left)
    im.paste(PIL.Image.new(mode, (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return im


def _palette_image(transparent):
    im = PIL.Image.new("P", (16, 8), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    im.paste(1, (8, 0, 16, 8))
    if transparent: im.info["transparency"] = 0
    return im


def _array_image(a):
    return PIL.Image.fromarray(a)


WHITE, BLACK = (255, 255, 255), (0, 0, 0)
# mode -> (builder, expected RGB of the left half, expected RGB of the right half, file format for a round trip)
MODES = {
    "L": (lambda: _two_halves("L", 77, 200), (77,) * 3, (200,) * 3, "PNG"),
    "LA": (lambda: _two_halves("LA", (0, 0), (30, 255)), WHITE, (30,) * 3, "PNG"),
    "P": (lambda: _palette_image(False), (10, 20, 30), (200, 100, 50), "PNG"),
    "P+transparency": (lambda: _palette_image(True), WHITE, (200, 100, 50), "PNG"),
    "RGBA": (lambda: _two_halves("RGBA", (0, 0, 0, 0), (255, 0, 0, 255)), WHITE, (255, 0, 0), "PNG"),
    "CMYK": (lambda: _two_halves("CMYK", (0, 0, 0, 0), (0, 255, 255, 0)), WHITE, (255, 0, 0), "TIFF"),
    "I;16": (lambda: _array_image(np.repeat([[0] * 8 + [65535] * 8], 8, 0).astype(np.uint16)), BLACK, WHITE, "PNG"),
    "I": (lambda: _array_image(np.repeat([[0] * 8 + [65535] * 8], 8, 0).astype(np.int32)), BLACK, WHITE, "TIFF"),
    "F": (lambda: _array_image(np.repeat([[0.0] * 8 + [1.0] * 8], 8, 0).astype(np.float32)), BLACK, WHITE, "TIFF"),
    "1": (lambda: _two_halves("1", 0, 1), BLACK, WHITE, "PNG"),
}


def _check_halves(rgb, left, right):
    a = np.asarray(rgb).astype(int)
    assert rgb.mode == "RGB"
    assert np.abs(a[:, :8] - np.array(left)).max() <= 1, a[0, 0]
    assert np.abs(a[:, 8:] - np.array(right)).max() <= 1, a[0, -1]


@pytest.mark.parametrize("name", list(MODES))
def test_pil_modes_convert_to_rgb(name):
    build, left, right, _ = MODES[name]
    im = build()
    assert im.mode == name.split("+")[0]
    out = to_rgb(im)
    assert out.size == im.size
    _check_halves(out, left, right)
    _check_halves(load_image(im), left, right)


@pytest.mark.parametrize("name", list(MODES))
def test_pil_modes_from_files(name, tmp_path):
    "The same images written to disk (PNG or TIFF) and read back through load_image."
    build, left, right, fmt = MODES[name]
    im = build()
    p = tmp_path / f"img.{fmt.lower()}"
    im.save(p, fmt, **({"transparency": 0} if name == "P+transparency" else {}))
    _check_halves(load_image(p), left, right)
    _check_halves(load_image(p.read_bytes()), left, right)


# ----------------------------------------------------------------------------- captions

@pytest.mark.parametrize("bad", ["", " ", "\n\t  "])
def test_empty_caption_rejected(bad, pipe, images):
    with pytest.raises(DSDInputError, match="caption 2 is empty"):
        check_captions(["a cat", bad])
    with pytest.raises(DSDInputError, match="empty"):
        DSDScorer(pipe, steps=2).score(images[:1], ["a cat", bad])
    with pytest.raises(DSDInputError, match="empty"):
        DSDScorer(pipe, steps=2).score_pairs(images[:1], [bad])


def _n_tokens(tok, text):
    return len(tok(text, truncation=False).input_ids) - 2  # without start and end tokens


def test_long_caption_warns_with_dropped_count(pipe, images):
    tok = pipe.tokenizer
    L = tok.model_max_length
    assert L == 77
    long = " ".join(["cat"] * 100)
    n = _n_tokens(tok, long)
    dropped = n - (L - 2)
    assert dropped > 0
    with pytest.warns(CaptionTruncatedWarning, match=rf"the last {dropped} tokens were dropped"):
        E = encode_captions(tok, pipe.text_encoder, ["a cat", long])
    assert E.shape == (2, L, pipe.text_encoder.config.hidden_size)
    with pytest.warns(CaptionTruncatedWarning, match=rf"caption 2 .* {n} tokens .*the last {dropped} tokens"):
        s = DSDScorer(pipe, steps=2).score(images[:1], ["a cat", long])
    assert torch.isfinite(s).all()


def test_caption_length_boundary(pipe):
    "75 real tokens fit (no warning); 76 do not (one token dropped)."
    tok = pipe.tokenizer
    unit = "cat"
    assert _n_tokens(tok, unit) == 1 and _n_tokens(tok, f"{unit} {unit}") == 2
    fits, over = " ".join([unit] * 75), " ".join([unit] * 76)
    assert _n_tokens(tok, fits) == 75 and _n_tokens(tok, over) == 76
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionTruncatedWarning)
        encode_captions(tok, pipe.text_encoder, [fits])
    with pytest.warns(CaptionTruncatedWarning, match="the last 1 tokens were dropped"):
        encode_captions(tok, pipe.text_encoder, [over])


def test_truncated_caption_scores_like_its_first_75_tokens(pipe, images):
    words = ["red", "cat", "dog", "tree", "blue", "house"]
    long = " ".join(words[i % len(words)] for i in range(90))
    head = " ".join(words[i % len(words)] for i in range(75))
    assert _n_tokens(pipe.tokenizer, head) == 75
    sc = DSDScorer(pipe, steps=2)
    with pytest.warns(CaptionTruncatedWarning):
        a = sc.score(images[:1], [long])
    assert torch.allclose(a, sc.score(images[:1], [head]), atol=1e-6)


def test_non_ascii_captions_score(pipe, images):
    caps = ["café", "猫", "a cat 🐱", "ünïcödé straße", "cafe"]
    tok = pipe.tokenizer
    ids = [tok(c).input_ids for c in caps]
    assert ids[0] != ids[-1], "'café' and 'cafe' must tokenize differently"
    assert all(len(i) > 2 for i in ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionTruncatedWarning)
        s = DSDScorer(pipe, steps=2).score(images[:2], caps)
    assert s.shape == (2, len(caps)) and s.dtype == torch.float32
    assert torch.isfinite(s).all()
    assert len(set(s[0].tolist())) == len(caps), "different captions should give different scores"
