import re
"""inputs and captions: bad images give `DSDInputError` with the documented messages, every PIL mode
becomes RGB (transparent pixels white), tensors are checked, captions are validated, long captions
warn with the number of dropped tokens, and non-ASCII captions score."""
import io, math, warnings
import numpy as np
import PIL.Image
import pytest
import torch

from dsd_nb.core import DSDInputError
from dsd_nb.inputs import to_rgb, load_image, images_to_tensor, check_captions, MIN_IMAGE_SIDE
from dsd_nb.scoring import DSDScorer, CaptionTruncatedWarning, encode_captions


def _jpeg_bytes(size=(64, 48)):
    rng = np.random.default_rng(0)
    b = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(b, "JPEG", quality=90)
    return b.getvalue()


# ----------------------------------------------------------------------------- bad image files

def test_missing_file(tmp_path):
    with pytest.raises(DSDInputError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"; p.write_bytes(b"")
    with pytest.raises(DSDInputError, match=r"is empty \(0 bytes\)"):
        load_image(p)
    with pytest.raises(DSDInputError, match="empty"):
        load_image(b"")


def test_directory(tmp_path):
    with pytest.raises(DSDInputError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes()
    p = tmp_path / "trunc.jpg"; p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DSDInputError, match="corrupt or truncated"):
        load_image(p)
    p.write_bytes(data[:100])  # header only
    with pytest.raises(DSDInputError, match="corrupt"):
        load_image(p)


def test_corrupt_jpeg(tmp_path):
    data = _jpeg_bytes()
    rng = np.random.default_rng(1)
    p = tmp_path / "corrupt.jpg"; p.write_bytes(data[:20] + rng.integers(0, 256, len(data) - 20, dtype=np.uint8).tobytes())
    with pytest.raises(DSDInputError, match="corrupt"):
        load_image(p)
    p.write_bytes(b"\xff\xd8\xff" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes())  # JPEG magic, then garbage
    with pytest.raises(DSDInputError, match="corrupt"):
        load_image(p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"; p.write_text("these are my notes, not a picture\n")
    with pytest.raises(DSDInputError, match="not an image PIL can read"):
        load_image(p)


@pytest.mark.parametrize("size", [(7, 20), (20, 7), (1, 1)])
def test_tiny_image(tmp_path, size):
    p = tmp_path / "tiny.png"; PIL.Image.new("RGB", size).save(p)
    with pytest.raises(DSDInputError, match=f"at least {MIN_IMAGE_SIDE} pixels"):
        load_image(p)
    with pytest.raises(DSDInputError, match="at least"):
        load_image(PIL.Image.new("RGB", size))
    with pytest.raises(DSDInputError, match="at least"):
        images_to_tensor(torch.rand(3, size[1], size[0]), size=64)


def test_smallest_allowed_image_loads():
    assert load_image(PIL.Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))).size == (8, 8)


def test_unsupported_source_type():
    with pytest.raises(DSDInputError):
        load_image(12345)


def test_bad_files_through_images_to_tensor_and_scorer(tmp_path, pipe):
    good = tmp_path / "good.png"; PIL.Image.new("RGB", (16, 16), "red").save(good)
    with pytest.raises(DSDInputError, match="does not exist"):
        images_to_tensor([good, tmp_path / "missing.png"], size=64)
    with pytest.raises(DSDInputError, match="no images"):
        images_to_tensor([], size=64)
    with pytest.raises(DSDInputError, match="does not exist"):
        DSDScorer(pipe, steps=2).score([good, tmp_path / "missing.png"], ["a cat"])


# ----------------------------------------------------------------------------- bad tensors

@pytest.mark.parametrize("x", [torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(3, 16, 16) + 0.5,
                               torch.full((1, 3, 16, 16), -0.01)])
def test_float_tensor_outside_unit_range(x):
    with pytest.raises(DSDInputError, match=r"\[0, 1\]"):
        images_to_tensor(x, size=64)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 3), (1, 16, 16, 3), (2, 4, 16, 16), (1, 1, 3, 16, 16)])
def test_wrong_tensor_shape(shape):
    with pytest.raises(DSDInputError, match=r"\[C, H, W\] or \[N, C, H, W\].*got shape " + re.escape(str(tuple(shape)))):
        images_to_tensor(torch.rand(shape), size=64)


def test_empty_tensor_batch():
    with pytest.raises(DSDInputError, match="no images"):
        images_to_tensor(torch.rand(0, 3, 16, 16), size=64)


def test_non_finite_and_integer_tensors():
    x = torch.rand(1, 3, 16, 16); x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DSDInputError, match="NaN"):
        images_to_tensor(x, size=64)
    with pytest.raises(DSDInputError):
        images_to_tensor(torch.ones(1, 3, 16, 16, dtype=torch.int64), size=64)


def test_tensor_conversion_values():
    x = torch.rand(2, 3, 64, 64)
    out = images_to_tensor(x, size=64)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert torch.allclose(out, x * 2 - 1, atol=1e-6)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(images_to_tensor(u8, size=64), u8.float() / 255 * 2 - 1, atol=1e-6)
    gray = images_to_tensor(torch.rand(1, 1, 32, 32), size=32)
    assert gray.shape == (1, 3, 32, 32) and torch.equal(gray[:, 0], gray[:, 1])
    assert images_to_tensor(torch.rand(3, 40, 90), size=(32, 48)).shape == (1, 3, 32, 48)


def test_pil_and_tensor_inputs_agree():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = images_to_tensor(PIL.Image.fromarray(arr), size=64)
    b = images_to_tensor(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, size=64)
    assert a.shape == b.shape == (1, 3, 64, 64)
    assert torch.allclose(a, b, atol=1e-6)
    assert a.min() >= -1 and a.max() <= 1


@pytest.mark.parametrize("as_tensor", [False, True])
def test_resize_modes(as_tensor):
    "A 3:1 image of red | green | blue thirds: squash keeps all three colours, center_crop keeps the green middle."
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32, 0] = 255; arr[:, 32:64, 1] = 255; arr[:, 64:, 2] = 255
    src = torch.from_numpy(arr).permute(2, 0, 1).float() / 255 if as_tensor else PIL.Image.fromarray(arr)
    sq = (images_to_tensor(src, size=32, resize="squash")[0] + 1) / 2
    cc = (images_to_tensor(src, size=32, resize="center_crop")[0] + 1) / 2
    assert sq.shape == cc.shape == (3, 32, 32)
    assert sq[0, :, :6].mean() > 0.9 and sq[2, :, -6:].mean() > 0.9 and sq[1, :, 14:18].mean() > 0.9
    assert cc[1, :, 4:-4].mean() > 0.9 and cc[0].mean() < 0.1 and cc[2].mean() < 0.1
    with pytest.raises(DSDInputError):
        images_to_tensor(src, size=32, resize="stretch")


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


def test_semi_transparent_pixels_blend_with_white():
    out = np.asarray(to_rgb(PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 128)))).astype(int)
    assert np.abs(out - 127).max() <= 1
    out = np.asarray(to_rgb(PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0)), background=(0, 0, 255)))
    assert (out == [0, 0, 255]).all()


def test_transparent_image_is_white_tensor():
    x = images_to_tensor(PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0)), size=16)
    assert torch.allclose(x, torch.ones_like(x))


def test_float_image_in_0_255():
    a = np.full((8, 8), 128.0, np.float32)
    assert np.asarray(to_rgb(PIL.Image.fromarray(a)))[0, 0].tolist() == [128, 128, 128]


def test_premultiplied_la_mode():
    im = PIL.Image.new("La", (8, 8))
    assert to_rgb(im).mode == "RGB"


# ----------------------------------------------------------------------------- captions

@pytest.mark.parametrize("bad", ["", " ", "\n\t  "])
def test_empty_caption_rejected(bad, pipe, images):
    with pytest.raises(DSDInputError, match="caption 2 is empty"):
        check_captions(["a cat", bad])
    with pytest.raises(DSDInputError, match="empty"):
        DSDScorer(pipe, steps=2).score(images[:1], ["a cat", bad])
    with pytest.raises(DSDInputError, match="empty"):
        DSDScorer(pipe, steps=2).score_pairs(images[:1], [bad])


def test_other_bad_captions():
    with pytest.raises(DSDInputError): check_captions([])
    with pytest.raises(DSDInputError, match="not text"): check_captions(["a cat", 3])
    with pytest.raises(DSDInputError): check_captions(None)
    assert check_captions("a cat") == ["a cat"]
    assert check_captions(("a", "b")) == ["a", "b"]


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
