"""A run's samples: text generated from the prompts (mgm/prompts.py) with the
sample.* settings, and the files under samples/ that hold them."""
import itertools
import json
import os

import jax
import numpy as np
from absl import logging

from mgm import conditioned, decode, files
from mgm.data import mixture
from mgm.data.tokenizer import PAD, decode as detokenize
from mgm.prompts import read_prompts
from mgm.validate import unit_excess


def draw(config, model, params, step: int) -> list[str]:
  """Prompt + generated text for each prompt x sample.num_samples (the cached
  generator); random numbers keyed by sample.seed and the step, so a resumed
  run draws the same ones. Warns when a sample outgrew a level's max_units."""
  cfg = config.sample
  settings = decode.from_config(cfg, config.model.vocab_size)
  if model.spec.encoders:
    return _draw_conditioned(config, model, params, step, settings)
  texts = [p.text for p in read_prompts(config) for _ in range(cfg.num_samples)]
  tokens, lengths = decode.pack_prompts(texts, settings, model, config.data.seq_len)
  rng = jax.random.fold_in(jax.random.key(cfg.seed), step)
  out, _ = decode.generate(model, params, tokens, lengths, rng, settings,
                           cond=mixture.prompt_cond(config.data, len(texts)))
  _warn_unit_overflow(model.spec, np.asarray(out), config.data.seq_len, model.packing)
  return [p + t for p, t in zip(texts, decode.new_text(out, lengths, detokenize))]


def _draw_conditioned(config, model, params, step: int, settings) -> list[str]:
  """A conditioned model's samples: for each input (conditioned.sample_inputs) x
  sample.num_samples, '[name] ' + prompt + generated text."""
  cond, names = conditioned.sample_inputs(config, model.spec)
  copies = config.sample.num_samples
  cond = {k: np.repeat(v, copies, axis=0) for k, v in cond.items()}
  prompt = read_prompts(config)[0].text
  rng = jax.random.fold_in(jax.random.key(config.sample.seed), step)
  texts = conditioned.generate(config, model, params, cond, settings, rng,
                               [prompt] * len(cond[next(iter(cond))]))
  return [f"[{names[i // copies]}] {prompt}{t}" for i, t in enumerate(texts)]


def _warn_unit_overflow(spec, buffer, seq_len: int, packing: str = "none"):
  """Warn (naming the field) for each generated row [S] whose prompt + new tokens
  (up to the first PAD) hold more units than a level's max_units: past that point
  the generator's coarse context is wrong. Prompts alone are refused by validation."""
  for i, row in enumerate(buffer):
    real = row[:np.argmax(row == PAD)] if (row == PAD).any() else row
    excess = unit_excess(spec, real, seq_len, packing)
    if excess:
      level, count, bound = excess
      logging.warning("sample %d: prompt + generated text hold %d units at model.levels[%d] "
                      "(max_units=%d); the text after the overflow is unreliable: raise "
                      "model.levels[%d].max_units or lower sample.max_new_tokens",
                      i, count, level, bound, level)


def write(workdir, name, texts, config, step: int) -> str:
  """samples/NAME (NAME_2, NAME_3, ... when taken: never overwritten), headed by the
  step, the prompts and every sample.* field, one `# key: JSON value` line each."""
  directory = files.path(workdir) / "samples"
  directory.mkdir(parents=True, exist_ok=True)
  stem, ext = os.path.splitext(name)
  header = {"step": step, "prompts": [p.text for p in read_prompts(config)],
            **{f"sample.{k}": v for k, v in config.sample.to_dict().items()}}
  text = "".join(f"# {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in header.items())
  text += "".join(f"=== sample {i} ===\n{t}\n" for i, t in enumerate(texts))
  for n in itertools.count(1):
    path = directory / f"{stem}{'' if n == 1 else f'_{n}'}{ext}"
    if not path.exists():   # only process 0 writes: nothing is overwritten
      path.write_text(text, encoding="utf-8")
      return os.fspath(path)
