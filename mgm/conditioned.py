"""Generation from conditioned models (model.encoders): the held-out
evaluation (eval.examples) and the inputs of --mode=sample.

Held-out: the first eval.examples validation examples of the paired source
(mgm/data/paired.py) are generated greedily from their image or source alone
(an empty target prefix), scored against their references (exact match,
BLEU, chrF, CIDEr-D, ROUGE; mgm/metrics.py) and written to the workdir:
outputs/step_<N>.jsonl, and for images outputs/step_<N>.png, a grid of the
images with the generated and reference captions (mgm/outputs.py).
"""
import os

import jax
import numpy as np

from mgm import decode, outputs
from mgm.data import images as images_lib
from mgm.data import mixture, paired
from mgm.data.tokenizer import decode as detokenize
from mgm.errors import ConfigError
from mgm.metrics import caption_scores, text_scores

GRID_IMAGES = 16     # held-out images drawn in the PNG grid


def cond_rows(examples: list[dict], spec, data_cfg) -> dict:
  """The encoders' inputs of `examples` (raw schema), as the training batches
  hold them (paired.encode_example, data.blind_inputs included): image uint8
  [N, H, W, C], source int32 [N, data.source_len]."""
  rows = [paired.encode_example(x, seq_len=1, source_len=data_cfg.source_len,
                                inputs=spec.inputs, blind=data_cfg.blind_inputs)
          for x in examples]
  return {k: np.stack([r[k] for r in rows]) for k in spec.inputs}


def generate(config, model, params, cond: dict, settings, key, prompts=None) -> list[str]:
  """Text generated for each row of `cond` (numpy arrays [N, ...]) after its
  prompt ('' by default), in chunks of train.batch_size rows."""
  n = len(next(iter(cond.values())))
  prompts = [""] * n if prompts is None else prompts
  chunk, texts = config.train.batch_size, []
  for start in range(0, n, chunk):
    rows = slice(start, start + chunk)
    tokens, lengths = decode.pack_prompts(prompts[rows], settings, model, config.data.seq_len)
    part = {k: v[rows] for k, v in cond.items()}
    out, _ = decode.generate(model, params, tokens, lengths, jax.random.fold_in(key, start),
                             settings, cond=part)
    texts += decode.new_text(out, lengths, detokenize)
  return texts


def eval_settings(config) -> decode.DecodeSettings:
  """Greedy (or beam, eval.beam_size > 1) decoding of a whole target."""
  beam = config.eval.get("beam_size", 1)
  return decode.DecodeSettings(strategy="beam" if beam > 1 else "greedy",
                               beam_size=beam, max_new=config.data.seq_len - 1)


def heldout_scores(config, model, params, step: int, workdir: str | None) -> dict:
  """Scores of the first eval.examples held-out examples ({} when 0 or the model
  is unconditioned); writes their outputs to `workdir` (None: nothing written)."""
  n = config.eval.get("examples", 0)
  if not n or not model.spec.encoders:
    return {}
  if mixture.is_mixture(config.data):
    return _mixture_scores(config, model, params, step, workdir, n)
  examples = paired.held_out_examples(config.data, n)
  cond = cond_rows(examples, model.spec, config.data)
  return _scores(config, model, params, examples, cond, step, workdir)


def _mixture_scores(config, model, params, step, workdir, n) -> dict:
  """heldout_<metric>_<task> of each task with an image or source; its outputs
  under <workdir>/tasks/<task>/outputs/."""
  result = {}
  for i in mixture.paired_tasks(config.data):
    name = config.data.tasks[i].name
    examples = paired.held_out_examples(mixture.task_data(config.data, i), n)
    cond = mixture.cond_rows(examples, config.data, i)
    where = None if workdir is None else os.path.join(workdir, "tasks", name)
    scores = _scores(config, model, params, examples, cond, step, where)
    result.update({f"{k}_{name}": v for k, v in scores.items()})
  return result


def _scores(config, model, params, examples, cond, step, workdir) -> dict:
  """Greedy (or beam) generation from `cond` scored against `examples`' references."""
  hyps = generate(config, model, params, cond, eval_settings(config), jax.random.key(0))
  refs = [list(x.get("references") or [x["target"]]) for x in examples]
  scores = {**{k: v for k, v in text_scores(hyps, [r[0] for r in refs]).items()
               if k.startswith("rouge")},
            **caption_scores(hyps, refs)}
  if workdir is not None:
    _write(workdir, step, examples, cond, hyps, refs)
  return {f"heldout_{k}": v for k, v in scores.items()}


def _write(workdir, step, examples, cond, hyps, refs):
  rows = [{"id": i, **({"source": paired.readable(x["source"])} if "source" in x else {}),
           "references": r, "generated": h}
          for i, (x, h, r) in enumerate(zip(examples, hyps, refs))]
  outputs.write_outputs(workdir, step, rows)
  if "image" in examples[0]:
    k = min(GRID_IMAGES, len(hyps))
    outputs.caption_grid(cond["image"][:k], hyps[:k], refs[:k],
                         os.path.join(workdir, "outputs", f"step_{step}.png"))


def sample_inputs(config, spec) -> tuple[dict, list[str]]:
  """The inputs --mode=sample conditions on, and a name for each: sample.image
  (a file or folder) and/or sample.source / sample.source_file; without them,
  the first held-out examples' (one per sample.num_samples draw)."""
  cfg, cond, names = config.sample, {}, []
  if mixture.is_mixture(config.data):   # held-out examples of the first task with inputs
    i = mixture.sampled_task(config.data)
    examples = paired.held_out_examples(mixture.task_data(config.data, i), 4)
    return (mixture.cond_rows(examples, config.data, i),
            [f"task {config.data.tasks[i].name}, held-out example {k}"
             for k in range(len(examples))])
  for e in spec.encoders:
    if e.encoder_kind.input == "image" and cfg.image:
      cond["image"], names = images_lib.load_images(cfg.image, e.image_size, e.channels)
    elif e.encoder_kind.input == "source" and (cfg.source or cfg.source_file):
      texts = images_lib.load_sources(cfg.source, cfg.source_file, e.max_len)
      cond["source"] = np.stack([paired.token_row(t, e.max_len) for t in texts])
      names = names or texts
  if cond:
    missing = set(spec.inputs) - set(cond)
    if missing:
      raise ConfigError(f"sample.{sorted(missing)[0]}", "the model also reads this input; "
                        "give it too, or none of them to sample from held-out examples")
    if len({len(v) for v in cond.values()}) > 1:
      raise ConfigError("sample.source_file", "give as many sources as images")
    return cond, names
  examples = paired.held_out_examples(config.data, 4)
  return cond_rows(examples, spec, config.data), [f"held-out example {i}" for i in
                                                  range(len(examples))]
