"""The three modes of a run: train (with periodic eval, checkpoints, samples), eval, sample."""
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from mgm import checkpoint
from mgm.data import pipeline
from mgm import decode
from mgm.data.tokenizer import decode as detokenize
from mgm.errors import ConfigError, WorkdirError
from mgm.metrics import MetricsWriter, bits_per_byte, perplexity, write_json
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_state, make_eval_step, make_optimizer, make_train_step, param_count


@dataclasses.dataclass
class Run:
  """What every mode builds from a config: model, optimizer, initial state."""
  config: object
  workdir: str
  model: LM
  tx: object
  schedule: object
  state: object

  @classmethod
  def create(cls, config, workdir):
    model = LM(spec_lib.from_config(config.model))
    tx, schedule = make_optimizer(config.train)
    shape = (config.train.batch_size, config.data.seq_len)
    state = jax.jit(lambda rng: init_state(model, tx, rng, shape))(jax.random.key(config.seed))
    return cls(config, workdir, model, tx, schedule, state)

  def evaluate(self, params, batches) -> dict:
    eval_step = jax.jit(make_eval_step(self.model))
    total, count = 0.0, 0.0
    for batch in batches:
      s, c = eval_step(params, batch)
      total, count = total + float(s), count + float(c)
    nats = total / max(count, 1.0)
    return {"eval_loss": nats, "eval_bpb": bits_per_byte(nats), "eval_ppl": perplexity(nats)}

  def samples(self, params) -> list[str]:
    """Prompt + generated text for each prompt x sample.num_samples (the cached generator)."""
    cfg = self.config.sample
    spec = decode.from_config(cfg, self.config.model.vocab_size)
    prompts = [p for p in read_prompts(cfg) for _ in range(cfg.num_samples)]
    tokens, lengths = decode.pack_prompts(prompts, spec, self.model, self.config.data.seq_len)
    out, _ = decode.generate(self.model, params, tokens, lengths,
                             jax.random.key(cfg.seed), spec)
    return [p + t for p, t in zip(prompts, decode.new_text(out, lengths, detokenize))]


def read_prompts(sample_cfg) -> list[str]:
  if not sample_cfg.prompt_file:
    return [sample_cfg.prompt]
  try:
    with open(os.path.expanduser(sample_cfg.prompt_file), encoding="utf-8") as f:
      prompts = [line.rstrip("\n") for line in f if line.strip()]
  except OSError as e:
    raise ConfigError("sample.prompt_file", f"cannot read {sample_cfg.prompt_file!r}: {e}")
  if not prompts:
    raise ConfigError("sample.prompt_file", f"{sample_cfg.prompt_file!r} holds no prompt")
  return prompts


class Throughput:
  """Training tokens/s over windows of steps, excluding the first (compile) window
  and whatever happens between `tick` and `resume` (eval, checkpoints)."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.mark, self.mark_step = None, None
    self.total_s, self.total_steps, self.last = 0.0, 0, 0.0

  def tick(self, step: int) -> float:
    if self.mark is not None and step > self.mark_step:
      seconds, steps = time.time() - self.mark, step - self.mark_step
      self.total_s, self.total_steps = self.total_s + seconds, self.total_steps + steps
      self.last = steps * self.tokens_per_step / seconds
    self.mark = None
    return self.last

  def resume(self, step: int):
    if self.mark is None:
      self.mark, self.mark_step = time.time(), step

  def average(self) -> float:
    return self.total_steps * self.tokens_per_step / self.total_s if self.total_s else self.last


def check_units(metrics, config, step):
  """Stop with a clear error when a batch had more units than a level's static bound
  (the train step refused those updates, so nothing was learned from mixed units)."""
  excess = int(metrics["unit_overflow"])
  if excess:
    dynamic = [i for i, l in enumerate(config.model.levels[:-1]) if l.get("max_units", 0)]
    fields = ", ".join(f"model.levels[{i}].max_units" for i in dynamic) or "model.levels"
    raise ConfigError(fields, f"a batch before step {step} had {excess} more units than "
                      "the static maximum; raise it (or lower data.seq_len / set max_len)")


def _eval_set(config):
  return pipeline.eval_batches(config.data, batch_size=config.train.batch_size,
                               num_batches=config.train.eval_batches)


def write_samples(workdir, name, texts):
  path = os.path.join(workdir, "samples", name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for i, text in enumerate(texts):
      f.write(f"=== sample {i} ===\n{text}\n")
  return path


def train(config, workdir) -> dict:
  run = Run.create(config, workdir)
  cfg = config.train
  data_iter = iter(pipeline.make_dataset(config.data, "train", batch_size=cfg.batch_size,
                                         seed=config.seed))
  mngr = checkpoint.manager(workdir, config.checkpoint.keep)
  state, start = run.state, 0
  if mngr.latest_step() is not None:
    start = mngr.latest_step()
    state = checkpoint.restore(mngr, start, checkpoint.abstract(state), data_iter)
    logging.info("resumed from step %d", start)
  eval_set = _eval_set(config)
  stats = pipeline.source_stats(config.data)
  writer = MetricsWriter(workdir)
  train_step = jax.jit(make_train_step(run.model, run.tx), donate_argnums=0)
  meter = Throughput(cfg.batch_size * config.data.seq_len)
  t0 = time.time()
  last_eval = {}
  bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, unit="step",
             dynamic_ncols=True, mininterval=1.0)
  for step in bar:
    state, metrics = train_step(state, next(data_iter))
    done = step + 1
    if done % cfg.log_every == 0 or done == cfg.steps:
      loss = float(metrics["loss"])   # blocks, so the meter times real compute
      check_units(metrics, config, done)
      row = {"train_loss": loss, "bpb": bits_per_byte(loss),
             "grad_norm": float(metrics["grad_norm"]), "lr": float(run.schedule(step)),
             "tokens_per_sec": meter.tick(done),
             **{k: float(v) for k, v in metrics.items() if k.startswith("aux_")}}
      if done % cfg.eval_every == 0 or done == cfg.steps:
        last_eval = run.evaluate(state.params, eval_set)
        row.update(last_eval)
      writer.write(done, row)
      bar.set_postfix(loss=f"{loss:.3f}", bpb=f"{row['bpb']:.3f}",
                      tok_s=f"{row['tokens_per_sec']:,.0f}", refresh=False)
    if done % config.checkpoint.every_steps == 0 or done == cfg.steps:
      checkpoint.save(mngr, done, state, data_iter)
    meter.resume(done)   # eval, checkpointing and logging are not training time
  bar.close()
  mngr.wait_until_finished()
  if not last_eval:
    last_eval = run.evaluate(state.params, eval_set)
  texts = run.samples(state.params)
  write_samples(workdir, f"step_{int(state.step)}.txt", texts)
  summary = {**last_eval, **stats, "steps": int(state.step), "wall_s": time.time() - t0,
             "tokens_per_sec": meter.average(), "params": param_count(state.params)}
  write_json(os.path.join(workdir, "summary.json"), summary)
  writer.close()
  return summary


def _restore_latest(run: Run):
  ckpt_dir = os.path.join(run.workdir, "checkpoints")
  step = None
  if os.path.isdir(ckpt_dir):
    mngr = checkpoint.manager(run.workdir, run.config.checkpoint.keep)
    step = mngr.latest_step()
  if step is None:
    raise WorkdirError(f"no checkpoint in {os.path.join(run.workdir, 'checkpoints')}; "
                            "train first (--mode=train) or point --workdir at a trained run")
  return checkpoint.restore(mngr, step, checkpoint.abstract(run.state)), step


def evaluate(config, workdir) -> dict:
  run = Run.create(config, workdir)
  state, step = _restore_latest(run)
  result = {"step": step, **run.evaluate(state.params, _eval_set(config))}
  write_json(os.path.join(workdir, f"eval_step_{step}.json"), result)
  return result


def sample(config, workdir) -> list[str]:
  run = Run.create(config, workdir)
  state, step = _restore_latest(run)
  texts = run.samples(state.params)
  write_samples(workdir, f"sample_step_{step}_seed_{config.sample.seed}.txt", texts)
  return texts
