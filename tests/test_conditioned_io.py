"""Conditioned generation's inputs and outputs, without a model: images and source
texts read (and refused, one line naming the field and the file), caption metrics
(exact match, BLEU/chrF, CIDEr-D against a value worked out by hand), held-out
outputs as JSONL, and the caption grid PNG."""
import contextlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from mgm.data.images import load_images, load_sources
from mgm.errors import ConfigError
from mgm.metrics import caption_scores, caption_tokens, cider_d, exact_match
from mgm.outputs import CELL_INCHES, DPI, caption_grid, write_outputs


def _pixels(seed: int, size: int = 8, channels: int = 3) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (size, size, channels), dtype=np.uint8)


def _png(path, pixels: np.ndarray) -> str:
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
  return str(path)


@contextlib.contextmanager
def _refused(field: str, *words: str):
  """The block raises a one-line ConfigError naming `field` and holding each of `words`."""
  with pytest.raises(ConfigError) as info:
    yield
  error = str(info.value)
  assert info.value.field == field, error
  assert error.startswith(f"config field `{field}`: ") and "\n" not in error, error
  for word in words:
    assert word in error, error


# --- images ---

def test_an_image_file_gives_its_pixels_back_exactly(tmp_path):
  rgb = _pixels(0)
  pixels, names = load_images(_png(tmp_path / "one.png", rgb), size=8, channels=3)
  assert pixels.dtype == np.uint8 and pixels.shape == (1, 8, 8, 3)
  np.testing.assert_array_equal(pixels[0], rgb)
  assert names == ["one.png"]


def test_a_folder_gives_its_images_sorted_by_name_and_ignores_other_files(tmp_path):
  order = ["c.PNG", "a.png", "d.png", "b.png"]              # written out of order
  for i, name in enumerate(order):
    _png(tmp_path / name, _pixels(i))
  (tmp_path / "notes.txt").write_text("not an image")
  pixels, names = load_images(str(tmp_path), size=8, channels=3)
  assert names == ["a.png", "b.png", "c.PNG", "d.png"]
  for image, name in zip(pixels, names):
    np.testing.assert_array_equal(image, _pixels(order.index(name)))


def test_grayscale_rgba_palette_and_jpeg_images_are_read(tmp_path):
  gray = _pixels(1, channels=1)
  np.testing.assert_array_equal(load_images(_png(tmp_path / "g.png", gray), 8, 1)[0][0], gray)
  rgba = _pixels(2, channels=4)
  np.testing.assert_array_equal(load_images(_png(tmp_path / "a.png", rgba), 8, 4)[0][0], rgba)
  colours = np.array([[200, 10, 10], [10, 200, 10]], np.uint8)   # a palette PNG: its colours
  rgb = colours[np.arange(64).reshape(8, 8) % 2]
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(
      tmp_path / "p.png")
  assert Image.open(tmp_path / "p.png").mode == "P"
  np.testing.assert_array_equal(load_images(str(tmp_path / "p.png"), 8, 3)[0][0], rgb)
  flat = np.full((16, 16, 3), (40, 120, 200), np.uint8)          # JPEG: lossy, but close
  Image.fromarray(flat).save(tmp_path / "f.jpg", quality=95)
  read = load_images(str(tmp_path / "f.jpg"), 16, 3)[0][0].astype(int)
  assert np.abs(read - flat).max() <= 3


def _bad_images(tmp_path):
  """name -> (path, size, channels, words the message must hold)."""
  rgb = _png(tmp_path / "wide.png", _pixels(0)[:, :6])
  gray = _png(tmp_path / "gray.png", _pixels(1, channels=1))
  rgba = _png(tmp_path / "rgba.png", _pixels(2, channels=4))
  (tmp_path / "noise.png").write_bytes(os.urandom(200))
  whole = (tmp_path / "rgba.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
  Image.fromarray(_pixels(3)).save(tmp_path / "anim.gif")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no images here")
  (tmp_path / "many").mkdir()
  for i in range(4):
    _png(tmp_path / "many" / f"{i}.png", _pixels(i))
  return {
      "wrong size": (rgb, 8, 3, ["wide.png", "6x8", "8x8"]),
      "grayscale to RGB": (gray, 8, 3, ["gray.png", "1 channel", "grayscale", "3 (RGB)"]),
      "RGBA to RGB": (rgba, 8, 3, ["rgba.png", "4 channel", "3 (RGB)"]),
      "bytes that are no image": (str(tmp_path / "noise.png"), 8, 3, ["noise.png",
                                                                       "cannot read"]),
      "truncated PNG": (str(tmp_path / "cut.png"), 8, 4, ["cut.png", "cannot read"]),
      "GIF": (str(tmp_path / "anim.gif"), 8, 3, ["anim.gif", "GIF", "PNG or JPEG"]),
      "missing path": (str(tmp_path / "nowhere.png"), 8, 3, ["nowhere.png", "does not exist"]),
      "empty folder": (str(tmp_path / "empty"), 8, 3, ["empty", "no PNG/JPEG"]),
      "over the limit": (str(tmp_path / "many"), 8, 3, ["many", "4 images", "limit of 3"]),
  }


BAD_IMAGES = ["wrong size", "grayscale to RGB", "RGBA to RGB", "bytes that are no image",
              "truncated PNG", "GIF", "missing path", "empty folder", "over the limit"]


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_a_bad_image_is_refused_naming_the_field_and_the_file(tmp_path, case):
  path, size, channels, words = _bad_images(tmp_path)[case]
  with _refused("sample.image", *words):
    load_images(path, size, channels, limit=3)
  with _refused("eval.images", *words):      # the caller's field is the one named
    load_images(path, size, channels, field="eval.images", limit=3)


# --- source texts ---

def test_a_source_fits_when_its_bytes_and_eos_fit_max_len():
  text = "héllo"                              # 6 UTF-8 bytes + EOS = 7 tokens
  assert load_sources(text, "", max_len=7) == [text]
  with _refused("sample.source", "6 bytes + EOS = 7 tokens", "max length 6"):
    load_sources(text, "", max_len=6)
  assert load_sources("", "", max_len=7) == []


def test_a_source_file_gives_one_source_per_non_blank_line(tmp_path):
  path = tmp_path / "sources.txt"
  path.write_text("first source\n\nsecond, longer source\n  \nthird\n", encoding="utf-8")
  assert load_sources("", str(path), max_len=64) == ["first source", "second, longer source",
                                                     "third"]
  with _refused("sample.source_file", "line 3 of", "sources.txt", "21 bytes"):
    load_sources("", str(path), max_len=21)
  jsonl = tmp_path / "pairs.jsonl"
  jsonl.write_text('{"source": "un", "target": "one"}\n{"source": "deux"}\n', encoding="utf-8")
  assert load_sources("", str(jsonl), max_len=64) == ["un", "deux"]


def test_bad_sources_are_refused_naming_the_field(tmp_path):
  blank, latin1, jsonl = tmp_path / "blank.txt", tmp_path / "latin1.txt", tmp_path / "x.jsonl"
  blank.write_text("\n  \n")
  latin1.write_bytes("café\n".encode("latin-1"))
  jsonl.write_text('{"source": "ok"}\n{"text": "no source"}\n')
  cases = [(("a", str(blank)), "sample.source_file", ["only one of"]),
           (("", str(tmp_path / "missing.txt")), "sample.source_file", ["missing.txt",
                                                                        "cannot read"]),
           (("", str(blank)), "sample.source_file", ["blank.txt", "no source"]),
           (("", str(latin1)), "sample.source_file", ["latin1.txt", "not UTF-8"]),
           (("", str(jsonl)), "sample.source_file", ["line 2", "x.jsonl", '"source"'])]
  for (text, file), field, words in cases:
    with _refused(field, *words):
      load_sources(text, file, max_len=64)


# --- metrics ---

def test_exact_match_is_the_percent_equal_after_stripping_whitespace():
  assert exact_match(["a red circle", "two squares"], [" a red circle\n", "two squares"]) == 100
  assert exact_match(["a red circle", "two squares"], ["a blue circle", "two squares"]) == 50
  assert exact_match(["a red circle"], ["A red circle"]) == 0
  assert exact_match(["b"], [["a", " b "]]) == 100          # any of several references


def test_caption_scores_of_identical_and_disjoint_captions():
  refs = [["a red circle above a blue square"], ["two green triangles left of a star"]]
  same = caption_scores([r[0] for r in refs], refs)
  assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
  assert same["exact_match"] == 100 and same["cider"] == pytest.approx(10.0)
  other = caption_scores(["xyz hjk", "mpz kyx"], refs)   # no letter in common
  assert other == {"bleu": 0.0, "chrf": 0.0, "cider": 0.0, "exact_match": 0.0}
  half = caption_scores(["a red circle above a blue square", "xyz"], refs)
  assert half["exact_match"] == 50 and 0 < half["cider"] < 10


def test_caption_scores_use_every_reference():
  refs = [["the first way to say it", "a red circle above a blue square"],
          ["two green triangles left of a star"]]                  # 2 references, then 1
  scores = caption_scores(["a red circle above a blue square",
                           "two green triangles left of a star"], refs)
  assert scores["exact_match"] == 100 and scores["bleu"] == pytest.approx(100)
  assert scores["chrf"] == pytest.approx(100)
  # CIDEr-D averages over an image's references: image 1's hypothesis is its second
  # reference (similarity 1 at each order; "a", in both images, weighs nothing) and
  # shares nothing with its first (0): 10 * (1 + 0) / 2. Image 2: 10.
  assert scores["cider"] == pytest.approx((5 + 10) / 2)


def test_cider_d_matches_a_value_worked_out_by_hand():
  """Two images, one reference each. Image 2's hypothesis is its reference: 10.
  Image 1: "a b c" against "a b c d"; every n-gram is in one image's references
  (of two), so each weighs tf * log(2) and the cosine of order n is
  (shared n-grams) / sqrt(hyp n-grams * ref n-grams): 3/sqrt(3*4), 2/sqrt(2*3),
  1/sqrt(1*2) and 0 (no 4-gram). The length penalty exp(-1/(2*6^2)) for one word
  short (pycocoevalcap counts length in bigrams: 2 against 3, still 1 short); the
  mean of the four orders x 10. Punctuation and case are tokenised away."""
  cosines = [3 / math.sqrt(12), 2 / math.sqrt(6), 1 / math.sqrt(2), 0.0]
  image_1 = 10 * sum(cosines) / 4 * math.exp(-1 / 72)
  expected = (image_1 + 10) / 2
  assert expected == pytest.approx(7.94584, abs=1e-5)   # 5.89167 and 10
  score = cider_d(["A b, c.", "e f g h"], [["a b c d"], ["e f g h"]])
  assert score == pytest.approx(expected, rel=1e-9)


def test_caption_tokens_lower_case_and_drop_punctuation():
  assert caption_tokens("A Dog, running!  Fast.") == "a dog running fast"


# --- outputs ---

def test_write_outputs_writes_one_json_line_per_example_and_keeps_a_different_old_file(
    tmp_path):
  rows = [{"id": 0, "image": "a.png", "references": ["a red circle"], "generated": "a red circle"},
          {"id": np.int64(1), "source": "héllo", "references": ["hi", "hello"],
           "generated": "hello"}]
  path = write_outputs(str(tmp_path), 7, rows)
  assert path == str(tmp_path / "outputs" / "step_7.jsonl")
  lines = open(path, encoding="utf-8").read().splitlines()
  assert [json.loads(line) for line in lines] == [{**rows[0]}, {**rows[1], "id": 1}]
  assert sorted(os.listdir(tmp_path / "outputs")) == ["step_7.jsonl"]   # no .tmp left
  write_outputs(str(tmp_path), 7, rows)                                  # the same again
  assert sorted(os.listdir(tmp_path / "outputs")) == ["step_7.jsonl"]
  write_outputs(str(tmp_path), 7, rows[:1])                              # different
  kept = sorted(os.listdir(tmp_path / "outputs"))
  assert len(kept) == 2 and "step_7.jsonl" in kept
  old = [k for k in kept if k != "step_7.jsonl"][0]
  assert open(tmp_path / "outputs" / old, encoding="utf-8").read().splitlines() == lines


def _red_pixels(path) -> int:
  """Pixels of matplotlib's tab:red (#d62728), the colour of a wrong caption."""
  pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
  return int((np.abs(pixels - [214, 39, 40]).sum(-1) < 30).sum())


def _cells(columns: int, rows: int) -> tuple[int, int]:
  """Pixel size of a grid of columns x rows cells."""
  return round(columns * CELL_INCHES[0] * DPI), round(rows * CELL_INCHES[1] * DPI)


def test_caption_grid_is_a_png_of_one_cell_per_image_with_wrong_captions_marked(tmp_path):
  images = np.zeros((6, 16, 16, 3), np.uint8)
  refs = [[f"caption {i}"] for i in range(6)]
  right = caption_grid(images, [r[0] for r in refs], refs, str(tmp_path / "right.png"))
  width, height = Image.open(right).size
  assert (width, height) == _cells(4, 2)
  assert _red_pixels(right) == 0
  wrong = caption_grid(images, ["caption 0", "wrong", *[r[0] for r in refs[2:]]], refs,
                       str(tmp_path / "wrong.png"))
  assert _red_pixels(wrong) > 100
  gray = caption_grid(np.zeros((3, 16, 16, 1), np.uint8), ["a"] * 3, [["a"]] * 3,
                      str(tmp_path / "gray.png"))            # fewer images than columns
  assert Image.open(gray).size == _cells(3, 1)
  narrow = caption_grid(images[:5], ["a"] * 5, [["a"]] * 5, str(tmp_path / "narrow.png"),
                        columns=2)
  assert Image.open(narrow).size == _cells(2, 3)
  assert sorted(os.listdir(tmp_path)) == ["gray.png", "narrow.png", "right.png", "wrong.png"]
