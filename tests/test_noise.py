"""The denoising `autoencode` task (issue 14, part 3): its noise is a function of
(seed, split, index), span corruption and byte noise hold their configured
rates, sentinels are bytes no UTF-8 text contains, the target is the original
text, the source is cut to data.source_len, a tiny seq2seq run trains on it end
to end, and bad noise fields are refused before anything is written."""
import json
import re

import numpy as np
import pytest

from configs import lm, seq2seq
from mgm import loop
from mgm.data import noise, paired, pipeline, sources
from mgm.data.tokenizer import EOS, PAD
from mgm.errors import ConfigError
from test_data import assert_batches_equal, take

SENTINELS = set(noise.SENTINELS.tolist())
AT_A_SENTINEL = re.compile(b"[" + re.escape(bytes(sorted(SENTINELS))) + b"]")


def settings(kind="span", **rates) -> noise.Noise:
  fields = dict(density=0.15, mean_span=20.0, delete=0.0, replace=0.0, insert=0.0, seed=0)
  return noise.Noise(kind=kind, **{**fields, **rates})


def data_cfg(**overrides):
  cfg = lm.base_config().data
  cfg.update(source="autoencode", seq_len=64, source_len=64, val_examples=12)
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def documents() -> list[str]:
  """100 texts of 1 to 20 synthetic corpus documents (28 to ~6000 bytes, 257 KB)."""
  corpus = sources.synthetic_corpus(lm.base_config().data)
  docs = [corpus.document(i, "train") for i in range(1050)]
  ends = np.cumsum([1 + i % 20 for i in range(100)])
  return ["\n".join(docs[end - 1 - i % 20:end]) for i, end in enumerate(ends)]


def span_counts(text: str, source: bytes) -> tuple[int, int]:
  """(bytes masked, spans) of a span-corrupted `text`, read off the source alone:
  each span left one sentinel, and no byte of the text is one."""
  spans = sum(b in SENTINELS for b in source)
  return len(text.encode()) - (len(source) - spans), spans


# --- determinism ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", noise.KINDS)
def test_noise_is_a_function_of_seed_split_and_index(kind, documents):
  rates = dict(delete=0.05, replace=0.05, insert=0.05)
  text = documents[19][:1000]
  first = [noise.corrupt(text, settings(kind, **rates), "train", i) for i in range(20)]
  again = [noise.corrupt(text, settings(kind, **rates), "train", i) for i in range(20)]
  seeded = [noise.corrupt(text, settings(kind, seed=1, **rates), "train", i) for i in range(20)]
  held_out = [noise.corrupt(text, settings(kind, **rates), "validation", i) for i in range(20)]
  assert first == again
  assert len(set(first)) == 20, "each example index draws its own noise"
  assert sum(a != b for a, b in zip(first, seeded)) >= 18
  assert sum(a != b for a, b in zip(first, held_out)) >= 18
  assert all(s != text.encode() for s in first)


def test_examples_resume_exactly_and_follow_the_noise_seed():
  it = iter(pipeline.make_dataset(data_cfg(), "train", batch_size=2, seed=3))
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it
  want = take(it, 3)
  resumed = iter(pipeline.make_dataset(data_cfg(), "train", batch_size=2, seed=3))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), want)
  fresh = paired.examples(data_cfg(), "validation")
  assert [fresh[i] for i in range(8)] == [paired.examples(data_cfg(), "validation")[i]
                                          for i in range(8)]
  other = paired.examples(data_cfg(noise_seed=1), "validation")
  assert sum(fresh[i]["source"] != other[i]["source"] for i in range(8)) >= 6
  assert all(fresh[i]["target"] == other[i]["target"] for i in range(8))


# --- rates ---------------------------------------------------------------------------

@pytest.mark.parametrize("density,mean_span", [(0.15, 20.0), (0.15, 3.0), (0.3, 8.0)])
def test_span_corruption_masks_the_density_in_spans_of_the_mean_length(
    documents, density, mean_span):
  masked = spans = total = 0
  for i, text in enumerate(documents):
    source = noise.corrupt(text, settings(density=density, mean_span=mean_span), "train", i)
    m, s = span_counts(text, source)
    masked, spans, total = masked + m, spans + s, total + len(text.encode())
  assert total > 100_000
  assert abs(masked / total - density) < 0.002
  # a span wrapped by the roll reads as two: at most one per text
  assert mean_span * 0.9 < masked / spans < mean_span * 1.05, masked / spans


def runs(mask: np.ndarray) -> np.ndarray:
  """Lengths of the runs of True in a bool [n] mask."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
  return edges[1::2] - edges[::2]


def test_every_position_is_equally_likely_masked_and_span_lengths_are_random():
  gen = np.random.default_rng(0)
  masks = np.stack([noise.span_mask(200, 0.15, 20.0, gen) for _ in range(4000)])
  assert (masks.sum(axis=1) == 30).all()
  per_tenth = masks.reshape(4000, 10, 20).mean(axis=(0, 2))
  assert np.abs(per_tenth - 0.15).max() < 0.01, per_tenth   # sd ~0.003 a tenth
  unwrapped = [runs(m) for m in masks if not m[0] and not m[-1]]
  assert all(len(r) == 2 for r in unwrapped)                # round(30 / 20) spans
  lengths = np.concatenate(unwrapped)
  assert len(set(lengths.tolist())) >= 25                   # 1..29, uniformly composed
  assert abs(np.mean(lengths[::2]) - 15) < 0.5 and abs(np.mean(lengths[1::2]) - 15) < 0.5


def test_byte_noise_deletes_replaces_and_inserts_at_its_rates():
  text = "a" * 20_000     # every new byte differs from "a" with probability 242/243
  def measure(**rates):
    source = noise.corrupt(text, settings("bytes", **rates), "train", 0)
    return len(source) / len(text), sum(b != ord("a") for b in source) / len(text)
  sd = (0.1 * 0.9 / len(text)) ** 0.5             # ~0.002
  length, changed = measure(delete=0.1)
  assert abs(length - 0.9) < 4 * sd and changed == 0
  length, changed = measure(replace=0.1)
  assert length == 1 and abs(changed - 0.1) < 4 * sd
  length, changed = measure(insert=0.1)
  assert abs(length - 1.1) < 4 * sd and abs(changed - 0.1 * 242 / 243) < 4 * sd
  length, changed = measure(delete=0.05, replace=0.05, insert=0.05)
  assert abs(length - 1.0) < 6 * sd and abs(changed - 0.1) < 6 * sd


# --- sentinels, target, source -------------------------------------------------------

def test_sentinels_are_bytes_no_utf8_text_contains():
  every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
  used = set(np.unique(np.frombuffer(every_character.encode("utf-8"), np.uint8)).tolist())
  assert len(SENTINELS) == 13 and not used & SENTINELS and used | SENTINELS == set(range(256))


@pytest.mark.parametrize("kind", noise.KINDS)
def test_sentinels_mark_exactly_the_spans_of_any_utf8_text(kind):
  gen = np.random.default_rng(1)
  alphabet = [chr(c) for c in (*range(32, 127), 0xE9, 0x4E2D, 0x1F600, 0x10FFFF)]
  for i in range(200):
    text = "".join(gen.choice(alphabet, int(gen.integers(0, 300))))
    source = noise.corrupt(text, settings(kind, delete=0.1, replace=0.1, insert=0.1),
                           "train", i)
    pieces = re.split(AT_A_SENTINEL, source)
    if kind == "bytes":
      assert len(pieces) == 1, "byte noise never writes a sentinel"
    elif kind == "span":   # the unmasked runs of the text, in order, between sentinels
      data, at = text.encode("utf-8"), 0
      for piece in pieces:
        found = data.find(piece, at)
        assert found >= 0, (text, source)
        at = found + len(piece)
      assert (len(pieces) - 1 >= 1) == (len(data) >= 2)


def test_the_target_is_the_original_passage_and_the_source_is_cut_to_source_len():
  cfg = data_cfg(seq_len=48, source_len=24)
  held_out = paired.held_out_examples(cfg, 12)
  copies = paired.held_out_examples(data_cfg(source="copy", seq_len=48, source_len=24), 12)
  assert [e["target"] for e in held_out] == [c["target"] for c in copies]
  assert all(e["references"] == [e["target"]] for e in held_out)
  assert all(e["source"] != e["target"].encode() for e in held_out)
  batch = take(pipeline.make_dataset(cfg, "validation", batch_size=12, seed=0), 1)[0]
  assert batch["source"].shape == (12, 24) and batch["tokens"].shape == (12, 48)
  for example, source, tokens in zip(held_out, batch["source"], batch["tokens"]):
    want = list(example["source"]) + [EOS]
    np.testing.assert_array_equal(source, (want + [PAD] * 24)[:24])
    want = list(example["target"].encode()) + [EOS]
    np.testing.assert_array_equal(tokens, (want + [PAD] * 48)[:48])
  assert sum(len(e["source"]) >= 24 for e in held_out) >= 3, "some sources are cut"
  assert "autoencode" in paired.describe(cfg)


# --- end to end, refusals ------------------------------------------------------------

def test_a_tiny_seq2seq_autoencode_run_trains_and_writes_readable_sources(tmp_path):
  config = seq2seq.get_config("size=tiny,task=autoencode")
  config.data.noise = "both"
  config.train.update(steps=2, eval_every=2, log_every=1, eval_batches=1)
  config.checkpoint.every_steps = 2
  config.eval.examples = 2
  summary = loop.run_mode(config, str(tmp_path / "run"), "train")
  assert np.isfinite(summary["eval_loss"]) and summary["steps"] == 2
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "outputs" / "step_2.jsonl").read_text().splitlines()]
  examples = paired.held_out_examples(config.data, 2)
  assert [r["references"] for r in rows] == [[e["target"]] for e in examples]
  assert [r["source"] for r in rows] == [paired.readable(e["source"]) for e in examples]
  assert any("\\xff" in r["source"] for r in rows)   # the first span's sentinel, readable


@pytest.mark.parametrize("field,value", [
    ("data.noise", "mask"), ("data.noise_density", 1.0), ("data.noise_mean_span", 0.5),
    ("data.noise_delete", -0.1), ("data.noise_replace", 0.96), ("data.noise_insert", 1.5),
    ("data.noise_seed", -1)])
def test_bad_noise_is_refused_naming_the_field_before_anything_is_written(
    tmp_path, field, value):
  config = seq2seq.get_config("size=tiny,task=autoencode")
  config.data.update({field.split(".")[1]: value})
  with pytest.raises(ConfigError) as error:
    loop.run_mode(config, str(tmp_path / "run"), "train")
  assert error.value.field == field, str(error.value)
  assert not (tmp_path / "run").exists()
