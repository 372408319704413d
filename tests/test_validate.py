"""Config validation: each invalid config gives a ConfigError naming its field, before
anything is built; through launch.py, exit status 2 and one line, no traceback."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs.lm import get_config
from mgm.errors import ConfigError
from mgm.validate import validate

ROOT = Path(__file__).resolve().parents[1]

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
    ({"model.levels[0].pool": "max"}, "model.levels[0].pool"),
    ({"model.levels[0].upsample": "nearest"}, "model.levels[0].upsample"),
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
    override(config, dotted, value)
  with pytest.raises(ConfigError) as error:
    validate(config)
  assert error.value.field == field
  assert f"`{field}`" in str(error.value)


def test_the_presets_are_valid():
  for preset in ("tiny", "demo", "small", "base", "model=mgm3,size=demo"):
    validate(get_config(preset))


@pytest.mark.parametrize("args,field", [
    (["--config.checkpoint.keep_best=True", "--config.checkpoint.every_steps=5"],
     "checkpoint.keep_best"),
    (["--config.train.max_nonfinite_in_a_row=-1"], "train.max_nonfinite_in_a_row"),
])
def test_launch_exits_2_with_one_line_naming_the_field(tmp_path, args, field):
  proc = subprocess.run([sys.executable, "launch.py", "--config=configs/lm.py:tiny",
                         f"--workdir={tmp_path / 'w'}", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert f"`{field}`" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists(), "nothing is written for an invalid config"
