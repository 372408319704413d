"""Config validation: each invalid config gives a ConfigError naming its field, before
anything is built; through launch.py, exit status 2 and one line, no traceback."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs.lm import get_config
from mgm.errors import ConfigError
from mgm.validate import NOT_IN_UTF8, validate

ROOT = Path(__file__).resolve().parents[1]

def all_utf8_bytes() -> str:
  """A string whose UTF-8 uses every byte that UTF-8 text can contain."""
  seqs = [bytes([b]) for b in range(0x80)] + [chr(c).encode() for c in range(0x80, 0xC0)]
  seqs += [bytes([b, 0x80]) for b in range(0xC2, 0xE0)]
  seqs += [bytes([0xE0, 0xA0, 0x80])] + [bytes([b, 0x80, 0x80]) for b in range(0xE1, 0xF0)]
  seqs += [bytes([0xF0, 0x90, 0x80, 0x80])] + [bytes([b, 0x80, 0x80, 0x80])
                                               for b in range(0xF1, 0xF5)]
  text = b"".join(seqs).decode("utf-8")
  assert set(text.encode()) == set(range(256)) - NOT_IN_UTF8
  return text


# (overrides as dotted path -> value, the field the message must name)
INVALID = [
    ({"seed": -0.5}, "seed"),
    ({"data.seq_len": 0}, "data.seq_len"),
    ({"data.text_doc_bytes": -1}, "data.text_doc_bytes"),
    ({"data.source": "parquet"}, "data.source"),
    ({"data.source": "text", "data.files": " "}, "data.files"),
    ({"data.source": "tfds", "data.tfds_name": ""}, "data.tfds_name"),
    ({"data.val_fraction": 1.0}, "data.val_fraction"),
    ({"train.steps": 0}, "train.steps"),
    ({"train.batch_size": -8}, "train.batch_size"),
    ({"train.grad_accum": 0}, "train.grad_accum"),
    ({"train.grad_accum": 3}, "train.grad_accum"),                # 16 sequences
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.eval_every": -1}, "train.eval_every"),
    ({"train.eval_batches": 0}, "train.eval_batches"),
    ({"train.lr": 0.0}, "train.lr"),
    ({"train.lr": float("nan")}, "train.lr"),
    ({"train.grad_clip": -1.0}, "train.grad_clip"),
    ({"train.warmup_steps": -1}, "train.warmup_steps"),
    ({"train.warmup_steps": 100}, "train.warmup_steps"),
    ({"train.weight_decay": -0.1}, "train.weight_decay"),
    ({"train.min_lr_ratio": 2.0}, "train.min_lr_ratio"),
    ({"train.b1": 1.0}, "train.b1"),
    ({"train.b2": -0.5}, "train.b2"),
    ({"train.max_nonfinite_in_a_row": -1}, "train.max_nonfinite_in_a_row"),
    ({"checkpoint.every_steps": 0}, "checkpoint.every_steps"),
    ({"checkpoint.keep": 0}, "checkpoint.keep"),
    ({"checkpoint.every_minutes": -5.0}, "checkpoint.every_minutes"),
    ({"checkpoint.keep_best": True, "checkpoint.every_steps": 5}, "checkpoint.keep_best"),
    ({"checkpoint.init_from": "/nonexistent/run"}, "checkpoint.init_from"),
    ({"model.levels[0].heads": 3}, "model.levels[0].heads"),
    ({"model.levels[0].depth": -1}, "model.levels[0].depth"),
    ({"model.levels[0].width": 0}, "model.levels[0].width"),
    ({"model.levels[0].span": "diagonal"}, "model.levels[0].span"),
    ({"model.dtype": "float8"}, "model.dtype"),
    ({"model.attention_impl": "flash"}, "model.attention_impl"),
    ({"model.attention_impl": "cudnn"}, "model.attention_impl"),   # float32 / no GPU
    ({"model.remat_policy": "some"}, "model.remat_policy"),
    ({"sample.num_samples": 0}, "sample.num_samples"),
    ({"sample.strategy": "nucleus"}, "sample.strategy"),
    ({"sample.temperature": -1.0}, "sample.temperature"),
    ({"sample.top_p": 0.0}, "sample.top_p"),
    ({"sample.max_new_tokens": 1000}, "sample.max_new_tokens"),
    ({"eval.prompt_tokens": 200, "eval.new_tokens": 100}, "eval.new_tokens"),
    ({"eval.continuations": -1}, "eval.continuations"),
    ({"model.levels[0].pool": "median"}, "model.levels[0].pool"),
    ({"model.levels[0].upsample": "nearest"}, "model.levels[0].upsample"),
    ({"eval.prompt_tokens": 0}, "eval.prompt_tokens"),
    ({"eval.new_tokens": 0}, "eval.new_tokens"),
    ({"train.min_lr_ratio": -0.1}, "train.min_lr_ratio"),
    ({"data.val_fraction": 0.0}, "data.val_fraction"),
    ({"checkpoint.keep_best": "yes"}, "checkpoint.keep_best"),
    ({"checkpoint.init_from": 3}, "checkpoint.init_from"),
    ({"sample.banned": "<every byte UTF-8 uses>"}, "sample.banned"),
    ({"sample.temperature": float("nan")}, "sample.temperature"),
    ({"sample.temperature": float("inf")}, "sample.temperature"),
    ({"sample.top_p": float("nan")}, "sample.top_p"),
    ({"sample.length_penalty": float("inf")}, "sample.length_penalty"),
    ({"train.lr": float("inf")}, "train.lr"),
    ({"data.files": "~/corpus/*.txt"}, "data.files"),            # source is synthetic
    ({"sample.prompt_file": "MISSING.txt"}, "sample.prompt_file"),
    ({"model.vocab_size": 256}, "model.vocab_size"),
    ({"model.levels[0].mixer": "lstm", "model.levels[0].span": "window:8"},
     "model.levels[0].span"),                                 # a state sees its whole past
    ({"model.levels[0].mixer": "conv", "model.levels[0].span": "window:8"},
     "model.levels[0].span"),                                 # its kernel is its window
    ({"model.levels[0].mixer": "mamba"}, "model.levels[0].mixer"),
    ({"model.levels[0].mixer": "conv:0"}, "model.levels[0].mixer"),
]


def override(config, dotted, value):
  """Set `a.b[0].c` in a ConfigDict, of any type (as a config file could)."""
  *parents, last = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
  node = config
  for part in parents:
    node = node[int(part[1:-1])] if part.startswith("[") else node[part]
  with node.ignore_type():
    node[last] = value


@pytest.mark.parametrize("overrides,field", INVALID,
                         ids=[f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _ in INVALID])
def test_an_invalid_config_names_its_field(overrides, field):
  config = get_config("tiny")
  for dotted, value in overrides.items():
    override(config, dotted, all_utf8_bytes() if value == "<every byte UTF-8 uses>" else value)
  with pytest.raises(ConfigError) as error:
    validate(config)
  assert error.value.field == field
  assert f"`{field}`" in str(error.value)


def test_the_presets_are_valid():
  for preset in ("tiny", "demo", "small", "base", "model=mgm3,size=demo"):
    validate(get_config(preset))


@pytest.mark.parametrize("size", ["tiny", "demo", "small", "base"])
def test_the_conditioned_presets_are_valid(size):
  from configs import caption, seq2seq
  for encoder in caption.ENCODERS:
    validate(caption.get_config(f"size={size},model=mgm3,encoder={encoder}"))
  for task in seq2seq.TASKS:
    validate(seq2seq.get_config(f"size={size},task={task}"))


def refusal(config) -> str:
  with pytest.raises(ConfigError) as error:
    validate(config)
  return str(error.value)


def short_text_corpus(directory: Path) -> str:
  """Six one-line files: a held-out split of a few dozen bytes."""
  for i in range(6):
    (directory / f"f{i}.txt").write_text(f"short doc {i}\n")
  return str(directory / "*.txt")


def test_a_prompt_file_line_too_long_is_named_by_its_line(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("= Tara =\n\n" + "x" * 40 + "\n")
  config = get_config("tiny")
  config.sample.prompt_file = str(path)
  assert refusal(config) == (
      f"config field `sample.prompt_file`: line 3 of {str(path)!r} is 40 bytes; with "
      "sample.max_new_tokens=32 that exceeds data.seq_len=64; shorten it or lower "
      "sample.max_new_tokens")
  path.write_text("= Tara =\n\n" + "x" * 32 + "\n")
  validate(config)


def test_continuations_need_a_held_out_sequence_long_enough(tmp_path):
  config = get_config("tiny")
  config.data.update(source="text", files=short_text_corpus(tmp_path))
  validate(config)   # without continuations the corpus is fine
  config.eval.continuations = 2
  assert refusal(config) == (
      "config field `eval.continuations`: no held-out sequence among the 16 eval rows has 48 "
      "tokens (eval.prompt_tokens=32 + eval.new_tokens=16); lower those, or set "
      "eval.continuations=0")
  config.eval.update(prompt_tokens=4, new_tokens=4)
  validate(config)


def test_a_prompt_with_more_units_than_max_units_is_refused():
  config = get_config("model=mgm3,size=tiny")   # sentence level: max_units 64 // 8
  config.sample.update(prompt="Hi. " * 9, max_new_tokens=8)
  assert refusal(config) == (
      "config field `sample.prompt`: sample.prompt has 9 'sentence' units, more than "
      "model.levels[0].max_units=8; shorten it or raise model.levels[0].max_units")
  config.sample.prompt = "Hi. " * 8
  validate(config)


def test_max_units_too_few_for_the_first_training_batch_is_refused():
  """Else the train step refuses every update and the run stops at its first log step."""
  config = get_config("model=mgm3,size=tiny")
  config.model.levels[0].max_units = 2
  assert refusal(config).startswith("config field `model.levels[0].max_units`: 2 is too few: "
                                    "the batch before step 1 has a sequence of ")
  config.model.levels[0].max_units = 8   # the preset's
  validate(config)


@pytest.mark.parametrize("field,value,line", [
    ("sample.temperature", float("nan"), "must be a finite number, got nan"),
    ("sample.top_p", float("inf"), "must be a finite number, got inf"),
    ("data.files", "~/corpus/*.txt", "is set but data.source='synthetic', which ignores it; "
     "add --config.data.source=text to use it, or leave it empty"),
])
def test_the_refusal_is_one_exact_line(field, value, line):
  config = get_config("tiny")
  override(config, field, value)
  assert refusal(config) == f"config field `{field}`: {line}"


def launch_refused(tmp_path, *args):
  workdir = tmp_path / "w"
  proc = subprocess.run([sys.executable, "launch.py", "--config=configs/lm.py:tiny",
                         f"--workdir={workdir}", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert not workdir.exists(), "nothing is written for an invalid config"
  return proc.stderr.splitlines()


@pytest.mark.parametrize("args,line", [
    (["--config.checkpoint.keep_best=True", "--config.checkpoint.every_steps=5"],
     "config field `checkpoint.keep_best`: ranks checkpoints by eval_bpb, so every checkpoint "
     "step needs an eval: checkpoint.every_steps=5 is not a multiple of train.eval_every=10; "
     "change one"),
    (["--config.sample.prompt_file=MISSING.txt"],
     "config field `sample.prompt_file`: cannot read 'MISSING.txt' (No such file or "
     "directory); give a UTF-8 file with one prompt per line"),
])
def test_launch_exits_2_with_one_line_naming_the_field(tmp_path, args, line):
  assert launch_refused(tmp_path, *args) == [f"launch.py: {line}"]


def test_launch_refuses_continuations_the_held_out_text_cannot_feed(tmp_path):
  files = short_text_corpus(tmp_path)
  lines = launch_refused(tmp_path, "--config.data.source=text", f"--config.data.files={files}",
                         "--config.eval.continuations=2")
  assert lines == ["launch.py: config field `eval.continuations`: no held-out sequence among "
                   "the 16 eval rows has 48 tokens (eval.prompt_tokens=32 + "
                   "eval.new_tokens=16); lower those, or set eval.continuations=0"]


def test_packed_documents_too_short_for_the_patch_bound_are_refused_before_step_1(tmp_path):
  """Under document_mask fixed patches restart at each document, so a row of many
  short documents holds more patches than T/P: the first batch is checked as the
  model runs it (3-byte documents: 16 per 64-byte row, > 1.5 x 64 / 8 = 12)."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("abcdefghij klmnop\n" * 300)
  config = get_config("model=megabyte,size=tiny")
  config.data.update(source="text", files=str(corpus), text_doc_bytes=3)
  with pytest.raises(ConfigError, match=r"model\.levels\[0\]\.max_units"):
    validate(config)
  config.data.packing = "none"       # one stream: patches are exact, nothing to refuse
  validate(config)
