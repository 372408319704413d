"""data.packing=document_mask: documents packed in one row do not see each other.

A document's logits are the same whatever was packed before it (and the same as
alone at the start of a row), for every preset; the model stays causal; the
cached decoder agrees with the teacher-forced pass across document ends and on
a prompt packed as the last document of a row; fixed patches and segmenter
units never span a document; the field is validated and older runs resume.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm import decode, workdir
from mgm.data import pipeline
from mgm.data.tokenizer import EOS, PAD, encode
from mgm.errors import ConfigError, WorkdirError
from mgm.model import incremental
from mgm.model import segment as seg_lib
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.nn import attention
from mgm.nn.span import SPANS
from mgm.train import init_params
from mgm.validate import validate

SEQ = 64   # the tiny presets' data.seq_len
DOC = " Go on. The cat sat, ok!\n\nNew p"   # under test: 31 bytes, opening with a delimiter
BEFORE = ["Hi there. A b", "x", "Some other words, here. Yes"]   # 13, 1, 27 bytes


def model_of(name, packing="document_mask"):
  """A tiny preset; 'megabyte-linear': MEGABYTE with linear upsampling;
  'hourglass-attention': Hourglass with attention + linear upsampling."""
  config = lm_configs.get_config(f"model={name.split('-')[0]},size=tiny")
  if name.endswith("-linear"):
    config.model.levels[0].upsample = "linear"
  if name.endswith("-attention"):
    config.model.levels[0].upsample = "attention:linear"
  return LM(spec_lib.from_config(config.model), packing)


@functools.lru_cache(maxsize=None)
def params_of(name):
  """The preset's parameters (the same for both packings); jitted: 4x faster here."""
  model = model_of(name)
  return jax.jit(lambda rng: init_params(model, rng, (2, SEQ)))(jax.random.key(0))


def row(*docs, tail="and after it more"):
  """Documents packed into one row: each followed by EOS, then `tail`, then PAD."""
  ids = np.concatenate([np.append(encode(d), EOS) for d in docs] + [encode(tail)])[:SEQ]
  return np.pad(ids, (0, SEQ - len(ids)), constant_values=PAD).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _apply(name, packing):
  model = model_of(name, packing)
  return jax.jit(lambda params, t: model.apply({"params": params}, t))


def logits(name, rows, packing="document_mask"):
  """Teacher-forced logits of rows [R <= 4, SEQ] (run as 4 rows: one compile per model)."""
  padded = np.pad(rows, ((0, 4 - len(rows)), (0, 0)), constant_values=PAD)
  return np.asarray(_apply(name, packing)(params_of(name), jnp.asarray(padded)))[:len(rows)]


@pytest.mark.parametrize("name", lm_configs.MODELS + ("megabyte-linear", "hourglass-attention"))
def test_a_documents_logits_do_not_depend_on_what_was_packed_before_it(name):
  # DOC alone, then after documents of 13, 1+27 and 27 bytes (so it starts
  # mid-patch for megabyte/hourglass), the last two differing only in content.
  rows = np.stack([row(DOC), row(BEFORE[0], DOC), row(BEFORE[1], BEFORE[2], DOC),
                   row(BEFORE[2][::-1], DOC)])
  starts = [0, 14, 30, 28]
  n = len(DOC) + 1                                   # its bytes and its EOS
  isolated = logits(name, rows)
  for r, start in enumerate(starts[1:], 1):
    np.testing.assert_allclose(isolated[r, start:start + n], isolated[0, :n], atol=2e-5,
                               rtol=1e-4, err_msg=f"row {r}: the document saw its neighbours")
  stream = logits(name, rows, "none")                     # ...which packing=none does
  assert not np.allclose(stream[3, 28:28 + n], stream[2, 30:30 + n], atol=1e-3)


ALPHABET = np.array(list(b"ab  .!\n") + [EOS], np.int32)


@pytest.mark.parametrize("name", ["megabyte", "hourglass-attention", "mgm3"])
def test_causal_with_documents_ending_anywhere(name):
  """Changing tokens >= j (EOS among them) leaves logits <= j unchanged."""
  rng = np.random.default_rng(0)
  base = ALPHABET[rng.integers(0, len(ALPHABET), SEQ)]
  variants = np.repeat(base[None], SEQ, axis=0)
  for j in range(SEQ):
    variants[j, j:] = ALPHABET[rng.integers(0, len(ALPHABET), SEQ - j)]
    variants[j, j] = EOS if base[j] != EOS else ord("a")
  rows = np.concatenate([base[None], variants])
  # 4 rows at a time: the program test_a_documents_logits_... compiled for this model
  out = np.concatenate([logits(name, rows[i:i + 4]) for i in range(0, len(rows), 4)])
  for j in range(SEQ):
    np.testing.assert_allclose(out[1 + j, :j + 1], out[0, :j + 1], atol=2e-5, rtol=1e-4,
                               err_msg=f"a change at position {j} leaked backwards")


@pytest.mark.parametrize("name", ["flat", "megabyte", "megabyte-linear", "hourglass-attention",
                                  "mgm3"])
def test_cached_steps_equal_teacher_forced_across_document_ends(name):
  """Prefill a prompt, then step through a row of several documents: the
  decoder's logits equal the teacher-forced ones at every position."""
  model, params = model_of(name), params_of(name)
  rows = np.stack([row(BEFORE[0], "x", DOC), row(BEFORE[1], BEFORE[2], DOC)])
  reference = logits(name, rows)
  lengths = np.array([7, 3])
  prompts = np.where(np.arange(SEQ)[None] < lengths[:, None], rows, PAD)
  prefill = jax.jit(functools.partial(incremental.prefill, model))
  _, state = prefill(params, jnp.asarray(prompts), jnp.asarray(lengths))
  step = jax.jit(functools.partial(incremental.step, model))
  for k in range(SEQ - 1 - lengths.max()):
    t = lengths + k
    out, state = step(params, state, jnp.asarray(rows[[0, 1], t]))
    np.testing.assert_allclose(np.asarray(out), reference[[0, 1], t + 1], atol=2e-5,
                               rtol=1e-4, err_msg=f"step {k}")


@pytest.mark.parametrize("name", ["flat", "megabyte", "mgm3"])
def test_generation_from_a_prompt_is_the_last_document_of_a_packed_row(name):
  """A prompt is one document: generating from it alone, or from a row where it
  is packed after other documents, gives the same greedy tokens and logits,
  equal to the teacher-forced pass over the packed row."""
  model, params = model_of(name), params_of(name)
  settings = decode.DecodeSettings(strategy="greedy", max_new=24, stop_at_eos=False)
  prompt, before = encode("Go on. The c"), np.append(encode(BEFORE[0]), EOS)
  other = np.append(encode(BEFORE[0][::-1]), EOS)
  rows = [prompt, np.concatenate([before, prompt]), np.concatenate([other, prompt])]
  lengths = np.array([len(r) for r in rows])
  tokens = np.stack([np.pad(r, (0, SEQ - len(r)), constant_values=PAD) for r in rows])
  out, trace = decode.generate(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                               jax.random.key(1), settings, record_logits=True)
  out, trace = np.asarray(out), np.asarray(trace)
  reference = logits(name, out)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(trace[b], reference[b, n:n + settings.max_new], atol=2e-5,
                               rtol=1e-4, err_msg=f"row {b}: cached != teacher-forced")
    np.testing.assert_allclose(trace[b], trace[0], atol=2e-5, rtol=1e-4,
                               err_msg=f"row {b}: the prompt saw the document before it")


@pytest.mark.parametrize("name", ["megabyte", "hourglass", "mgm3"])
def test_units_never_span_a_document_and_patches_restart(name):
  model = model_of(name)
  rows = np.stack([row(BEFORE[0], DOC), row(BEFORE[1], BEFORE[2], DOC)])
  levels = model.levels[:-1]
  seg = seg_lib.segment(jnp.asarray(rows), levels, SEQ, documents=True)
  docs = np.asarray(seg_lib.documents(jnp.asarray(rows)))
  starts = np.pad(rows[:, :-1] == EOS, ((0, 0), (1, 0)), constant_values=True)
  for i, level in enumerate(model.spec.levels[:-1]):
    units = np.asarray(seg.unit_of_token[i])
    for r in range(len(rows)):
      for u in np.unique(units[r]):
        assert len(set(docs[r, units[r] == u])) == 1, f"level {i} unit {u} spans documents"
      opens = np.pad(units[r, 1:] != units[r, :-1], (1, 0), constant_values=True)
      assert np.all(opens[starts[r]]), f"level {i}: a document starts inside a unit"
    size = level.units_kind.patch
    if size:        # P tokens from each document start; the last ends at EOS
      for r in range(len(rows)):
        first = np.flatnonzero(starts[r])
        for a, b in zip(first, list(first[1:]) + [SEQ]):
          lengths = np.bincount(units[r, a:b] - units[r, a])
          assert np.all(lengths[:-1] == size) and 0 < lengths[-1] <= size


@pytest.mark.parametrize("span", ["full", "window:16"])
def test_long_and_local_attention_keep_documents_apart(span, monkeypatch):
  """The chunked long-sequence path (queries in chunks, here of 32) and
  blockwise window attention equal one masked block: causal, same document,
  within the window."""
  monkeypatch.setattr(attention, "QUERY_CHUNK", 32)
  length, rng = 96, np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, length, 2, 8)), jnp.float32) for _ in range(3))
  ids = jnp.asarray(np.sort(rng.integers(0, 5, (2, length)), axis=1))
  window = int(span[7:]) if span.startswith("window") else length
  t = np.arange(length)
  mask = (ids[:, :, None] == ids[:, None, :]) & ((t[:, None] - t[None]) < window)
  reference = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], is_causal=True)
  np.testing.assert_allclose(SPANS.parse(span).attend(q, k, v, doc_ids=ids), reference,
                             atol=1e-5, rtol=1e-5)


def test_document_ids_are_the_pipelines_segment_ids():
  config = lm_configs.get_config("tiny")
  batch = next(iter(pipeline.make_dataset(config.data, "train", batch_size=8, seed=0)))
  real = batch["mask"] > 0
  ids = np.asarray(seg_lib.documents(jnp.asarray(batch["tokens"])))
  assert batch["segment_ids"].max() > 1                   # rows do pack several documents
  np.testing.assert_array_equal(ids[real] + 1, batch["segment_ids"][real])


def test_fixed_patch_bound_holds_on_the_corpus():
  """Patches restarting at documents outnumber seq_len / P; the default bound
  (1.5 x) holds on the demo corpus's rows."""
  config = lm_configs.get_config("model=megabyte,size=demo")
  model = LM(spec_lib.from_config(config.model), "document_mask")
  data = pipeline.make_dataset(config.data, "train", batch_size=16, seed=0)
  for batch, _ in zip(data, range(4)):
    seg = seg_lib.segment(jnp.asarray(batch["tokens"]), model.levels[:-1],
                          config.data.seq_len, documents=True)
    assert int(seg.overflow) == 0
    assert int(jnp.max(seg.counts[0])) > config.data.seq_len // 8


def test_bad_packing_names_the_field():
  config = lm_configs.get_config("model=megabyte,size=tiny")
  assert config.data.packing == "document_mask"        # the default
  validate(config)
  config.data.packing = "documents"
  with pytest.raises(ConfigError) as err:
    validate(config)
  assert err.value.field == "data.packing"


def test_a_run_saved_before_packing_existed_resumes_with_packing_none(tmp_path):
  config = lm_configs.get_config("tiny")
  old = workdir.config_to_dict(config)
  del old["data"]["packing"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  config.data.packing = "none"
  workdir.check_and_save_config(str(tmp_path), config, write=False)
  config.data.packing = "document_mask"     # it read rows as one stream: not this
  with pytest.raises(WorkdirError, match="data.packing"):
    workdir.check_and_save_config(str(tmp_path), config, write=False)
