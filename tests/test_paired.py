"""Paired data (issue 12, part 4): the batch contract of every paired source,
`shapes` rendering and captions, the translate lexicon, resume, sharding, refusal."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import lm
from mgm import validate
from mgm.data import paired, pipeline, shapes, sources
from mgm.data.tokenizer import EOS, PAD
from mgm.data.translate import Translator
from mgm.errors import ConfigError
from test_data import assert_batches_equal, take
from tfds_tiny import MgmTinyCaptions

RED, BLUE = (255, 0, 0), (0, 0, 255)


def data_cfg(**overrides):
  cfg = lm.base_config().data
  cfg.update(seq_len=48, source_len=40, val_examples=12, image_size=32)
  cfg.update(overrides)
  return cfg


def want_row(text: str, length: int) -> np.ndarray:
  """The contract, written out: bytes + EOS, cut to `length` (EOS first), PAD after."""
  ids = list(text.encode("utf-8")) + [EOS]
  ids = ids[:length]
  return np.array(ids + [PAD] * (length - len(ids)), np.int32)


def solid(path, colour, size, mode="RGB"):
  Image.new("RGB", size, colour).convert(mode).save(path)
  return os.path.basename(path)


@pytest.fixture
def pair_dir(tmp_path):
  """JSONL with images (other sizes and modes), JSONL with sources, and TSV files."""
  lines = []
  for i in range(10):
    name = solid(tmp_path / f"im{i}.png", RED if i % 2 else BLUE, (40 + 7 * i, 30),
                 ("RGB", "RGBA", "L")[i % 3] if i % 2 == 0 else "RGB")
    lines.append(json.dumps({"image": name, "target": f"picture {i} é",
                             **({"references": [f"picture {i} é", "other"]} if i == 0 else {})}))
  (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
  text = [json.dumps({"source": f"source {i} " * (i + 1), "target": f"target {i} " * i})
          for i in range(30)]
  (tmp_path / "text.jsonl").write_text("\n".join(text), encoding="utf-8")
  tsv = [f"question {i} {'x' * 3 * i}\tanswer {i}" for i in range(30)]
  (tmp_path / "pairs.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
  return tmp_path


def tfds_cfg(name, **fields):
  return data_cfg(source="tfds", tfds_name=name, tfds_eval_split="validation", **fields)


TFDS_CASES = {
    "coco_captions": dict(tfds_target_field="captions/text", tfds_image_field="image"),
    "wmt14_translate/de-en": dict(tfds_source_field="de", tfds_target_field="en"),
    "cnn_dailymail": dict(tfds_source_field="article", tfds_target_field="highlights"),
}


def configs_of(case, pair_dir):
  if case.startswith("pairs:"):
    return data_cfg(source="pairs", files=str(pair_dir / case.split(":")[1]), val_fraction=0.4)
  if case in TFDS_CASES:
    return tfds_cfg(case, **TFDS_CASES[case])
  return data_cfg(source=case)


# --- the batch contract --------------------------------------------------------------

@pytest.mark.parametrize("case", ["shapes", "translate", "summarize", "copy", "reverse",
                                  "pairs:images.jsonl", "pairs:text.jsonl", "pairs:pairs.tsv",
                                  *TFDS_CASES])
def test_batch_contract(case, pair_dir):
  cfg = configs_of(case, pair_dir)
  with tfds.testing.mock_data(num_examples=8):
    held_out = paired.held_out_examples(cfg, 100)
    batches = list(pipeline.make_dataset(cfg, "validation", batch_size=3, seed=0))
    train = take(pipeline.make_dataset(cfg, "train", batch_size=2, seed=0), 1)[0]
    inputs = paired.inputs(cfg)
  want_keys = {"tokens", "mask", "segment_ids"} | set(inputs)
  assert set(train) == want_keys and train["tokens"].shape == (2, 48)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert set(rows) == want_keys and len(held_out) == len(rows["tokens"]) >= 3
  assert rows["tokens"].dtype == rows["segment_ids"].dtype == np.int32
  assert rows["mask"].dtype == np.float32
  for i, example in enumerate(held_out):
    assert example["target"] == example["references"][0]
    np.testing.assert_array_equal(rows["tokens"][i], want_row(example["target"], 48))
    real = rows["tokens"][i] != PAD
    np.testing.assert_array_equal(rows["mask"][i], real.astype(np.float32))
    np.testing.assert_array_equal(rows["segment_ids"][i], real.astype(np.int32))
    if "source" in inputs:
      assert rows["source"].dtype == np.int32
      np.testing.assert_array_equal(rows["source"][i], want_row(example["source"], 40))
    if "image" in inputs:
      assert rows["image"].dtype == np.uint8 and rows["image"].shape[1:] == (32, 32, 3)
      np.testing.assert_array_equal(rows["image"][i], example["image"])


def test_pair_files_read_images_and_references(pair_dir):
  cfg = data_cfg(source="pairs", files=str(pair_dir / "images.jsonl"), val_fraction=0.4)
  examples = [e for split in sources.SPLITS for e in sources.make_source(cfg, split)]
  assert len(examples) == 10 and paired.inputs(cfg) == ("image",)
  for example in examples:
    i = int(example["target"].split()[1])
    assert example["references"] == ([f"picture 0 é", "other"] if i == 0
                                      else [f"picture {i} é"])
    colour = RED if i % 2 else BLUE
    if i % 3 == 2 and i % 2 == 0:   # saved grey: the grey value of blue on every channel
      colour = (Image.new("RGB", (1, 1), BLUE).convert("L").getpixel((0, 0)),) * 3
    assert example["image"].shape == (32, 32, 3)
    assert (example["image"] == np.array(colour, np.uint8)).all()


def test_coco_references_are_all_captions():
  cfg = tfds_cfg("coco_captions", **TFDS_CASES["coco_captions"])
  with tfds.testing.mock_data(num_examples=4):
    records = tfds.data_source("coco_captions", split="validation")
    examples = paired.held_out_examples(cfg, 4)
    for record, example in zip(records, examples):
      captions = [str(c) for c in record["captions"]["text"]]
      assert example["references"] == captions and example["target"] == captions[0]


def test_truncation_cuts_eos_first():
  cfg = data_cfg(source="reverse", seq_len=40, source_len=30)
  examples = paired.held_out_examples(cfg, 12)
  lengths = [len(e["target"].encode()) for e in examples]
  assert min(lengths) < 39 and max(lengths) >= 40   # both kinds occur
  rows = np.concatenate([b["tokens"] for b in pipeline.eval_batches(cfg, batch_size=4,
                                                                     num_batches=3)])
  for example, row in zip(examples, rows):
    data = np.frombuffer(example["target"].encode(), np.uint8)
    if len(data) >= 40:
      np.testing.assert_array_equal(row, data[:40])
      assert EOS not in row and PAD not in row
    else:
      assert row[len(data)] == EOS and (row[len(data) + 1:] == PAD).all()


def test_eval_batches_pad_the_last_batch(pair_dir):
  cfg = data_cfg(source="pairs", files=str(pair_dir / "images.jsonl"), val_fraction=0.4)
  count = len(sources.make_source(cfg, "validation"))
  batches = pipeline.eval_batches(cfg, batch_size=3, num_batches=count // 3 + 2)
  assert all(b["image"].shape == (3, 32, 32, 3) for b in batches)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert rows["mask"][:count].sum(axis=1).min() > 0
  assert not rows["mask"][count:].any() and (rows["tokens"][count:] == PAD).all()
  assert not rows["image"][count:].any() and not rows["segment_ids"][count:].any()


# --- shapes --------------------------------------------------------------------------

def test_shapes_render_deterministically():
  a, b, c = ([shapes.render(shapes.scene_at(seed, "train", i, 0.05), 32).tobytes()
              for i in range(20)] for seed in (0, 0, 1))
  assert a == b
  assert sum(x != y for x, y in zip(a, c)) >= 18


def test_shapes_caption_round_trips_and_covers_the_grammar():
  scenes = [shapes.scene_at(0, "train", i, 0.05) for i in range(600)]
  for scene in scenes:
    assert shapes.parse_caption(shapes.caption(scene)) == scene
  objects = [o for s in scenes for o in s]
  assert {len(s) for s in scenes} == {1, 2, 3}
  assert {o.shape for o in objects} == set(shapes.SHAPES) and len(shapes.SHAPES) >= 4
  assert {o.colour for o in objects} == set(shapes.COLOURS) and len(shapes.COLOURS) == 6
  assert {o.size for o in objects} == set(shapes.SIZES) == {"small", "large"}
  assert {o.cell for o in objects} == set(range(9))
  two = next(s for s in scenes if len(s) == 2)
  first, _, second = shapes.caption(two)[:-1].partition(" and ")
  with pytest.raises(ValueError):   # the same objects out of canonical order
    shapes.parse_caption(f"{second} and {first}.")


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_distinct_scenes_give_distinct_images(size):
  singles = [(shapes.Obj(cell, shape, colour, s),) for cell in range(9)
             for shape in shapes.SHAPES for colour in shapes.COLOURS for s in shapes.SIZES]
  images = {shapes.render(scene, size).tobytes() for scene in singles}
  assert len(images) == len(singles) == 432
  for scene in (shapes.scene_at(3, "train", i, 0.05) for i in range(50)):
    image = shapes.render(scene, size)
    cell = size / 3
    for c in range(9):   # each object's colour at its cell's centre, background elsewhere
      row, col = divmod(c, 3)
      pixel = image[int((row + 0.5) * cell), int((col + 0.5) * cell)]
      want = [shapes.COLOURS[o.colour] for o in scene if o.cell == c] or [shapes.BACKGROUND]
      np.testing.assert_array_equal(pixel, want[0])


def test_shapes_splits_are_disjoint_by_content():
  cfg = data_cfg(source="shapes", val_examples=100, val_fraction=0.2)
  val = {e["target"] for e in paired.held_out_examples(cfg, 100)}
  train = sources.make_source(cfg, "train")
  seen = {train[i]["target"] for i in range(1500)}
  assert len(val) > 50 and len(seen) > 1000 and not val & seen


# --- translate ---------------------------------------------------------------------

def test_translate_lexicon_is_a_bijection_and_invertible():
  corpus = sources.synthetic_corpus(data_cfg())
  words = {w for ws in corpus.lexicon.values() for w in ws}
  translator = Translator(corpus)
  forward = translator.forward
  assert set(forward) == words and len(set(forward.values())) == len(words)
  assert not set(forward.values()) & words
  assert Translator(corpus).forward == forward   # stable
  cfg = data_cfg(source="translate")
  for e in paired.held_out_examples(cfg, 12):
    assert translator.inverse(e["target"]) == e["source"] != e["target"]
  det, noun, verb, adv = (corpus.lexicon[c][0] for c in ("DET", "NOUN", "VERB", "ADV"))
  sentence = f"{adv.capitalize()}, {det} {noun} {verb}. {noun.capitalize()} {verb}!"
  assert translator.translate(sentence) == (
      f"{forward[verb].capitalize()}, {forward[noun]} {forward[det]} {forward[adv]}. "
      f"{forward[verb].capitalize()} {forward[noun]}!")


def test_summarize_and_copy_tasks_have_exact_references():
  cfg = data_cfg(source="summarize")
  corpus = sources.synthetic_corpus(cfg)
  for i, e in enumerate(paired.held_out_examples(cfg, 5)):
    document = corpus.document(i, "validation")
    assert e["target"] + "\n\n" + e["source"] == document
    assert e["target"] == document.split("\n")[0] and e["target"].startswith("= ")
  copies = paired.held_out_examples(data_cfg(source="copy"), 5)
  reversed_ = paired.held_out_examples(data_cfg(source="reverse"), 5)
  for c, r in zip(copies, reversed_):
    assert c["target"] == c["source"] == r["source"] == r["target"][::-1]


# --- resume and sharding -------------------------------------------------------------

@pytest.mark.parametrize("source", ["shapes", "translate"])
def test_iterator_state_resumes_exactly(source):
  dataset = pipeline.make_dataset(data_cfg(source=source), "train", batch_size=2, seed=3)
  it = iter(dataset)
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it
  want = take(it, 3)
  resumed = iter(pipeline.make_dataset(data_cfg(source=source), "train", batch_size=2, seed=3))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), want)
  other = take(pipeline.make_dataset(data_cfg(source=source), "train", batch_size=2, seed=4), 4)
  assert not np.array_equal(other[3]["tokens"], want[0]["tokens"])


def test_processes_read_disjoint_halves_of_the_global_batch():
  cfg = data_cfg(source="copy")
  def rows(split, index, count):
    batch = take(pipeline.make_dataset(cfg, split, batch_size=4, seed=0, process_index=index,
                                       process_count=count), 1)[0]
    assert batch["tokens"].shape[0] == 4 // count
    return [r.tobytes() for r in batch["source"]]
  single, first, second = rows("validation", 0, 1), rows("validation", 0, 2), rows("validation", 1, 2)
  assert first == single[0::2] and second == single[1::2]
  assert not set(rows("train", 0, 2)) & set(rows("train", 1, 2))


# --- bad input -------------------------------------------------------------------------

def _write_bad_inputs(tmp_path):
  (tmp_path / "ok.png").write_bytes(b"")
  solid(tmp_path / "ok.png", RED, (8, 8))
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  good = json.dumps({"image": "ok.png", "target": "fine"})
  (tmp_path / "badline.jsonl").write_text(f"{good}\n{good}\n{{\"target\": oops}}\n")
  (tmp_path / "badimage.jsonl").write_text(
      f"{good}\n{json.dumps({'image': 'broken.png', 'target': 'x'})}\n")
  (tmp_path / "mixed.jsonl").write_text(f"{good}\n{json.dumps({'source': 's', 'target': 't'})}\n")
  (tmp_path / "notab.tsv").write_text("a\tb\nno tab here\n")


@pytest.mark.parametrize("overrides, field, words", [
    (dict(source="captions"), "data.source", "shapes"),
    (dict(source="pairs", files="{d}/missing.jsonl"), "data.files", "matches no file"),
    (dict(source="pairs", files="{d}/badline.jsonl"), "data.files", "badline.jsonl:3: not valid JSON"),
    (dict(source="pairs", files="{d}/badimage.jsonl"), "data.files", "badimage.jsonl:2: image 'broken.png' cannot be read"),
    (dict(source="pairs", files="{d}/mixed.jsonl"), "data.files", "mixed.jsonl:2: has inputs"),
    (dict(source="pairs", files="{d}/notab.tsv"), "data.files", "notab.tsv:2: .* 0 tab"),
    (dict(source="shapes", source_len=0), "data.source_len", "positive integer"),
    (dict(source="shapes", image_size=-32), "data.image_size", "positive integer"),
    (dict(source="shapes", image_channels=4), "data.image_channels", "3 .RGB. or 1"),
    (dict(source="shapes", image_size=16), "data.image_size", "at least 24 pixels"),
    (dict(source="shapes", val_fraction=0.0002), "data.val_fraction", "leaves a split with none"),
    (dict(source="tfds", tfds_name="cnn_dailymail", tfds_source_field="body",
          tfds_target_field="highlights"), "data.tfds_source_field",
     r"no feature 'body'; its features are \['article', 'highlights', 'publisher', 'id'\]"),
    (dict(source="tfds", tfds_name="cnn_dailymail", tfds_source_field="article"),
     "data.tfds_target_field", "is empty"),
])
def test_bad_input_is_refused_naming_the_field(tmp_path, overrides, field, words):
  _write_bad_inputs(tmp_path)
  before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
  config = lm.get_config("tiny")
  config.data.update({k: v.format(d=tmp_path) if isinstance(v, str) else v
                      for k, v in overrides.items()})
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ConfigError, match=f"`{field}`.*{words}") as e:
      validate.validate(config)
  assert e.value.field == field and "\n" not in str(e.value)
  assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_prepared_tfds_dataset_gives_bytes_and_images(tmp_path):
  """A real prepared dataset (array_record, no TensorFlow): text comes back as
  bytes, images as arrays of any size; all decoded and fitted."""
  MgmTinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  cfg = data_cfg(source="tfds", tfds_name="mgm_tiny_captions", tfds_data_dir=str(tmp_path),
                 tfds_target_field="captions/text", tfds_source_field="question",
                 tfds_image_field="image")
  examples = paired.held_out_examples(cfg, 10)
  assert len(examples) == 3 and paired.inputs(cfg) == ("image", "source")
  for e in examples:
    i = int(e["references"][1].split()[-1])
    name = e["references"][1].split()[0]
    assert e["references"] == [f"a {name} picture", f"{name} everywhere {i}"]
    assert e["target"] == e["references"][0] and e["source"] == f"which colour is {i}? ünï"
    assert (e["image"] == np.array(MgmTinyCaptions.COLOURS[name], np.uint8)).all()
  batch = pipeline.eval_batches(cfg, batch_size=4, num_batches=1)[0]
  assert batch["image"].shape == (4, 32, 32, 3) and batch["source"].shape == (4, 40)
  assert batch["mask"][:3].sum(axis=1).min() > 0 and batch["mask"][3].sum() == 0
