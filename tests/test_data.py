"""Data pipeline: tokenizer, sources (synthetic, text, tfds), packing, state."""
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mgm.data import pipeline, sources
from mgm.errors import DataError
from mgm.data.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, decode, encode
from tfds_tiny import MgmTinyText

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(source="synthetic", seq_len=32, corpus_seed=0, synthetic={}, files="",
             text_doc_bytes=65536, val_fraction=0.05, tfds_name="", tfds_text_field="text",
             tfds_train_split="train", tfds_eval_split="validation", tfds_data_dir="")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def take(dataset_or_iter, n):
  it = iter(dataset_or_iter)
  return [next(it) for _ in range(n)]


def stream(batches) -> np.ndarray:
  """The real tokens of consecutive batches, in order."""
  return np.concatenate([b["tokens"][b["mask"] > 0] for b in batches])


def doc_stream(docs) -> np.ndarray:
  return np.concatenate([pipeline.document_tokens(d) for d in docs])


def split_docs(tokens) -> list[bytes]:
  """Documents of an EOS-separated token stream (a trailing partial one dropped)."""
  ends = np.flatnonzero(tokens == EOS)
  starts = np.concatenate([[0], ends[:-1] + 1])
  return [tokens[s:e].astype(np.uint8).tobytes() for s, e in zip(starts, ends)]


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture
def text_dir(tmp_path):
  """40 small files with unique lines: ~3 documents each at text_doc_bytes=64."""
  for i in range(40):
    lines = [f"file {i:02d} line {j}: {'é' * (j % 3)}{'x' * (i % 7)}\n" for j in range(6)]
    (tmp_path / f"f{i:02d}.txt").write_text("".join(lines), encoding="utf-8")
  return tmp_path


# --- tokenizer ---------------------------------------------------------------

@pytest.mark.parametrize("text", ["hello, world\n", "héllo wörld — 日本語 🎉", ""])
def test_tokenizer_round_trip(text):
  ids = encode(text)
  assert ids.dtype == np.int32 and ids.shape == (len(text.encode()),)
  assert ((ids >= 0) & (ids < 256)).all()
  assert decode(ids) == text
  np.testing.assert_array_equal(encode(text.encode()), ids)


def test_decode_never_raises():
  assert VOCAB_SIZE == 259 and (PAD, BOS, EOS) == (256, 257, 258)
  assert decode([0xFF, 0xFE, 0xC3]) == "\ufffd" * 3
  assert decode(np.array([[BOS, 104, 105, EOS, 0xE6], [33, PAD, PAD, 999, -1]])) == "hi\n\ufffd!"


# --- packing -----------------------------------------------------------------

def test_batches_pack_validation_documents_in_order():
  cfg = data_cfg()
  batches = take(pipeline.make_dataset(cfg, "validation", batch_size=4, seed=0), 6)
  for b in batches:
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "tokens": ((4, 32), np.int32), "segment_ids": ((4, 32), np.int32),
        "mask": ((4, 32), np.float32)}
    assert (b["mask"] == 1).all()  # an infinite stream is never padded
  got = stream(batches)
  corpus = sources.synthetic_corpus(cfg)
  want = doc_stream(corpus.document(i, "validation") for i in range(len(got) // 10 + 1))
  np.testing.assert_array_equal(got, want[:len(got)])


def test_segment_ids_mark_documents(text_dir):
  cfg = data_cfg(source="text", files=str(text_dir / "*.txt"), text_doc_bytes=64,
                 val_fraction=0.5, seq_len=48)
  batches = list(pipeline.make_dataset(cfg, "validation", batch_size=3, seed=0))
  docs = sources.make_source(cfg, "validation")
  np.testing.assert_array_equal(stream(batches), doc_stream(docs[i] for i in range(len(docs))))
  for row_tokens, row_seg in zip(*(np.concatenate([b[k] for b in batches])
                                   for k in ("tokens", "segment_ids"))):
    real = row_seg > 0
    n = real.sum()
    assert real[:n].all() and (row_tokens[n:] == PAD).all()  # padding only at the end
    seg, tok = row_seg[:n], row_tokens[:n]
    assert seg[0] == 1
    np.testing.assert_array_equal(np.diff(seg), (tok[:-1] == EOS).astype(np.int32))
  assert (stream(batches[-1:]) == EOS)[-1]


# --- determinism, state, sharding ---------------------------------------------

def test_shuffle_is_seeded_and_lazy():
  cfg = data_cfg()
  assert len(sources.make_source(cfg, "train")) >= 2**31 - 1
  a, b, c = (take(pipeline.make_dataset(cfg, "train", batch_size=4, seed=s), 3)
             for s in (1, 1, 2))
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["tokens"], c[0]["tokens"])


def test_train_epoch_is_a_permutation(text_dir):
  cfg = data_cfg(source="text", files=str(text_dir / "*.txt"), text_doc_bytes=64)
  docs = sources.make_source(cfg, "train")
  epochs = [split_docs(stream(pipeline.make_dataset(cfg, "train", batch_size=1, seed=s,
                                                    num_epochs=1)))
            for s in (0, 1)]
  want = sorted(docs[i] for i in range(len(docs)))
  assert sorted(epochs[0]) == sorted(epochs[1]) == want
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize("source, seq_len", [("synthetic", 32), ("text", 16)])
def test_iterator_state_resumes_exactly(text_dir, source, seq_len):
  # seq_len 16 with 16-byte documents: rows end exactly at document ends, where
  # grain's own packing state does not survive JSON (see pipeline).
  for i in range(40):
    (text_dir / f"exact{i:02d}.txt").write_text(f"{i:02d}" + "y" * 13)
  files = str(text_dir / "exact*.txt")
  cfg = data_cfg(source=source, seq_len=seq_len, files=files, val_fraction=0.2)
  dataset = pipeline.make_dataset(cfg, "train", batch_size=2, seed=3)
  it = iter(dataset)
  for k in range(5):
    next(it)
    state = it.get_state()
    want = take(it, 4)
    for restored in (state, json.loads(json.dumps(state))):
      resumed = iter(dataset)
      resumed.set_state(restored)
      assert_batches_equal(take(resumed, 4), want)
    it.set_state(state)


def test_processes_read_disjoint_shares(text_dir):
  cfg = data_cfg(source="text", files=str(text_dir / "*.txt"), text_doc_bytes=64,
                 val_fraction=0.5)
  def docs(index, count):
    batches = pipeline.make_dataset(cfg, "validation", batch_size=2, seed=0,
                                    process_index=index, process_count=count)
    return split_docs(stream(batches))
  single, first, second = docs(0, 1), docs(0, 2), docs(1, 2)
  assert len(single) == len(set(single)) > 4
  assert first == single[0::2] and second == single[1::2]
  assert not set(first) & set(second)
  with pytest.raises(ValueError, match="process_count"):
    pipeline.make_dataset(cfg, "train", batch_size=3, seed=0, process_count=2)


def test_eval_batches_are_fixed_and_padded(text_dir):
  cfg = data_cfg(source="text", files=str(text_dir / "*.txt"), text_doc_bytes=64)
  batches = pipeline.eval_batches(cfg, batch_size=4, num_batches=50)
  assert_batches_equal(batches, pipeline.eval_batches(cfg, batch_size=4, num_batches=50))
  assert len(batches) == 50 and all(b["tokens"].shape == (4, 32) for b in batches)
  docs = sources.make_source(cfg, "validation")
  np.testing.assert_array_equal(stream(batches), doc_stream(docs[i] for i in range(len(docs))))
  assert batches[-1]["mask"].sum() == 0 and (batches[-1]["tokens"] == PAD).all()


def test_source_stats(text_dir):
  stats = pipeline.source_stats(data_cfg())
  assert 0 < stats["entropy_floor_bpb"] < stats["unigram_bpb"] < 8
  cfg = data_cfg(source="text", files=str(text_dir / "*.txt"), text_doc_bytes=64)
  docs = sources.make_source(cfg, "train")
  counts = np.bincount(doc_stream(docs[i] for i in range(len(docs))))
  p = counts[counts > 0] / counts.sum()
  assert pipeline.source_stats(cfg) == {"unigram_bpb": pytest.approx(-(p * np.log2(p)).sum())}


# --- text source ---------------------------------------------------------------

def test_chunks_cut_at_lines_and_characters():
  data = b"ab\ncd\nefgh\n" + "é".encode() * 5
  bounds = sources.chunk_bounds(data, 5)
  assert [data[s:e] for s, e in bounds] == [b"ab\n", b"cd\n", b"efgh\n", "éé".encode(),
                                            "éé".encode(), "é".encode()]


def assert_chunks_of_about(bounds, size: int, max_bytes: int):
  """Contiguous [start, stop) chunks covering [0, size), each max_bytes // 2 to
  max_bytes bytes except the last."""
  assert bounds[0][0] == 0 and bounds[-1][1] == size
  assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
  lengths = [stop - start for start, stop in bounds]
  assert all(max_bytes // 2 <= n <= max_bytes for n in lengths[:-1]), sorted(set(lengths))
  assert 0 < lengths[-1] <= max_bytes


@pytest.mark.parametrize("kind", ["continuation bytes", "random bytes", "utf-16",
                                  "rare newlines"])
def test_any_bytes_are_chunked_into_documents_of_about_text_doc_bytes(kind):
  """Binary content or another encoding: cuts move back at most 3 bytes, so chunks keep
  their size and the time stays linear (cuts used to walk back over every 0x80-0xBF byte)."""
  rng = np.random.default_rng(0)
  data = {"continuation bytes": b"\x80" * 20_000,
          "random bytes": rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
          "utf-16": ("naïve café, 日本語 text\n" * 2000).encode("utf-16"),
          "rare newlines": (b"\n" + b"a" * 2_999) * 10}[kind]
  assert_chunks_of_about(sources.chunk_bounds(data, 1000), len(data), 1000)


def test_text_source_reads_a_binary_file_in_documents_of_about_text_doc_bytes(tmp_path):
  data = np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
  (tmp_path / "blob.bin").write_bytes(data)
  cfg = data_cfg(source="text", files=str(tmp_path / "*.bin"), text_doc_bytes=1000)
  docs = [d[i] for d in (sources.make_source(cfg, s) for s in sources.SPLITS)
          for i in range(len(d))]
  assert sum(map(len, docs)) == len(data) and all(len(doc) <= 1000 for doc in docs)
  assert sum(len(doc) < 500 for doc in docs) <= 1   # only the file's last chunk may be short


def test_text_source_splits_by_document(text_dir, monkeypatch):
  monkeypatch.setenv("HOME", str(text_dir))
  cfg = data_cfg(source="text", files="~/f0*.txt, ~/f1*.txt", text_doc_bytes=64)
  train, val = (sources.make_source(cfg, s) for s in ("train", "validation"))
  train_docs, val_docs = ({d[i] for i in range(len(d))} for d in (train, val))
  assert len(val_docs) >= 1 and len(train_docs) >= 10 and not train_docs & val_docs
  assert all(len(d) <= 64 and d.endswith(b"\n") for d in train_docs | val_docs)
  all_text = b"".join(sorted(p.read_bytes() for p in text_dir.glob("f[01]*.txt")))
  assert sum(map(len, train_docs | val_docs)) == len(all_text)


def test_tinyshakespeare():
  path = SHARED_DATA / "tinyshakespeare.txt"
  if not path.exists():
    pytest.skip("../shared/data is not part of a user's clone")
  cfg = data_cfg(source="text", files=str(path), seq_len=128)
  train, val = (sources.make_source(cfg, s) for s in ("train", "validation"))
  train_docs, val_docs = ([d[i] for i in range(len(d))] for d in (train, val))
  assert train_docs and val_docs and not set(train_docs) & set(val_docs)
  assert sum(map(len, train_docs + val_docs)) == path.stat().st_size
  batch = take(pipeline.make_dataset(cfg, "train", batch_size=8, seed=0), 1)[0]
  assert batch["tokens"].shape == (8, 128) and batch["mask"].all()


# --- tfds source -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_shakespeare", "lm1b"])
def test_tfds_mock_data(name):
  cfg = data_cfg(source="tfds", tfds_name=name)
  with tfds.testing.mock_data(num_examples=30):
    batches = take(pipeline.make_dataset(cfg, "train", batch_size=4, seed=0), 3)
    assert batches[0]["tokens"].shape == (4, 32) and all(b["mask"].all() for b in batches)
    assert pipeline.eval_batches(cfg, batch_size=4, num_batches=2)[0]["mask"].any()
    assert 0 < pipeline.source_stats(cfg)["unigram_bpb"] < 8


def test_tfds_prepared_dataset_gives_bytes(tmp_path):
  MgmTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  cfg = data_cfg(source="tfds", tfds_name="mgm_tiny_text", tfds_data_dir=str(tmp_path))
  val = sources.make_source(cfg, "validation")
  docs = [val[i] for i in range(len(val))]  # tfds shuffles examples when preparing
  assert sorted(docs) == [f"document {i}: naïve café\n".encode() * (i + 1) for i in range(3)]
  batches = pipeline.eval_batches(cfg, batch_size=2, num_batches=3)
  np.testing.assert_array_equal(stream(batches), doc_stream(val[i] for i in range(3)))
  cfg.tfds_eval_split = "dev"
  with pytest.raises(DataError, match=r"`data.tfds_eval_split`.*\['train', 'validation'\]"):
    sources.make_source(cfg, "validation")


# --- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("overrides, field, words", [
    (dict(source="csv"), "data.source", "synthetic"),
    (dict(source="text"), "data.files", "is empty"),
    (dict(source="text", files="/nonexistent/*.txt"), "data.files", "/nonexistent/"),
    (dict(source="tfds"), "data.tfds_name", "is empty"),
    (dict(source="tfds", tfds_name="tiny_shakespear"), "data.tfds_name", "tiny_shakespeare"),
])
def test_bad_config_names_the_field(overrides, field, words):
  with pytest.raises(DataError, match=f"`{field}`.*{words}") as e:
    sources.make_source(data_cfg(**overrides), "train")
  assert e.value.field == field


def test_bad_text_files_name_the_field(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(DataError, match="`data.files`.*empty"):
    sources.make_source(data_cfg(source="text", files=str(tmp_path / "*.txt")), "train")
  (tmp_path / "one.txt").write_text("one short document\n")
  with pytest.raises(DataError, match="`data.text_doc_bytes`.*single document"):
    sources.make_source(data_cfg(source="text", files=str(tmp_path / "*.txt")), "train")


def test_bad_tfds_names_the_field(tmp_path):
  cfg = data_cfg(source="tfds", tfds_name="tiny_shakespeare", tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError, match="`data.tfds_data_dir`.*download_and_prepare"):
    sources.make_source(cfg, "train")
  with tfds.testing.mock_data(num_examples=3):
    with pytest.raises(DataError, match=r"`data.tfds_text_field`.*\['text'\]"):
      sources.make_source(data_cfg(source="tfds", tfds_name="lm1b", tfds_text_field="body"),
                          "train")
