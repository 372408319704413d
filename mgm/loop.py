"""The three modes of a run: train (with periodic eval, checkpoints, samples), eval, sample."""
import dataclasses
import itertools
import json
import os
import textwrap
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from mgm import checkpoint, flops, sharding
from mgm.data import pipeline
from mgm import decode
from mgm.data.tokenizer import PAD, decode as detokenize
from mgm.errors import ConfigError, TrainingError, WorkdirError
from mgm.metrics import (MetricsWriter, bits_per_byte, last_logged, perplexity, set_aside,
                         summary_line, text_scores, write_json)
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.preemption import Preemption
from mgm.prompts import read_prompts
from mgm.validate import unit_excess, validate
from mgm.workdir import check_and_save_config
from mgm.train import init_state, make_eval_step, make_optimizer, make_train_step, param_count


@dataclasses.dataclass
class Run:
  """What every mode builds from a config: model, optimizer, initial state
  (created sharded on the mesh), and the train/eval steps jitted for that layout."""
  config: object
  workdir: str
  model: LM
  tx: object
  schedule: object
  state: object
  layout: sharding.Layout
  train_step: object   # (state, global batch) -> (state, metrics); donates state
  eval_step: object    # (params, global batch) -> (sum of nats, token count)
  flops_per_token: float   # analytic training FLOPs per token (mgm/flops.py)

  @classmethod
  def create(cls, config, workdir, mesh=None):
    """`mesh` defaults to the one `config.mesh` makes of all devices."""
    model = LM(spec_lib.from_config(config.model), config.data.packing)
    tx, schedule = make_optimizer(config.train)
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    layout = sharding.make_layout(config, model, tx, mesh)
    shape = (config.train.batch_size, config.data.seq_len)
    init = layout.jit(lambda rng: init_state(model, tx, rng, shape), out_shardings=layout.state)
    return cls(config, workdir, model, tx, schedule, init(jax.random.key(config.seed)), layout,
               layout.train_step(make_train_step(model, tx, config.train.grad_accum)),
               layout.eval_step(make_eval_step(model)),
               flops.train_flops_per_token(model.spec, config.data.seq_len))

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len

  def speed(self, tokens_per_sec: float, step: int) -> dict:
    """Training FLOPs so far, TFLOP/s and MFU at a measured tokens/s."""
    return {"train_flops": step * self.tokens_per_step * self.flops_per_token,
            **flops.utilization(tokens_per_sec, self.flops_per_token)}

  def batches(self, split: str, seed: int):
    """This process's share of the global batches of `split` (the training stream)."""
    index, count = self.layout.data_shard()
    return pipeline.make_dataset(self.config.data, split, batch_size=self.config.train.batch_size,
                                 seed=seed, process_index=index, process_count=count)

  def eval_set(self) -> list[dict]:
    """This process's share of the fixed evaluation batches."""
    index, count = self.layout.data_shard()
    return pipeline.eval_batches(self.config.data, batch_size=self.config.train.batch_size,
                                 num_batches=self.config.train.eval_batches,
                                 process_index=index, process_count=count)

  def evaluate(self, params, batches) -> dict:
    total, count = 0.0, 0.0
    for batch in batches:
      s, c = self.eval_step(params, self.layout.global_batch(batch))
      total, count = total + float(s), count + float(c)
    nats = total / max(count, 1.0)
    return {"eval_loss": nats, "eval_bpb": bits_per_byte(nats), "eval_ppl": perplexity(nats)}

  def continuation_scores(self, params) -> dict:
    """BLEU, chrF and ROUGE of greedy continuations of held-out text (eval.*): the
    first prompt_tokens of each validation sequence are the prompt, the next
    new_tokens the reference. Every process continues the same sequences."""
    cfg = self.config.eval
    if not cfg.continuations:
      return {}
    length = cfg.prompt_tokens + cfg.new_tokens
    rows = pipeline.held_out_rows(
        self.config.data, length=length, limit=cfg.continuations,
        max_rows=self.config.train.batch_size * self.config.train.eval_batches)
    if not rows:
      raise ConfigError("eval.continuations", "no validation sequence holds "
                        f"{length} real tokens; lower eval.prompt_tokens/new_tokens")
    spec = decode.DecodeSpec(strategy="greedy", max_new=cfg.new_tokens, stop_at_eos=False)
    tokens, lengths = decode.pack_tokens([r[:cfg.prompt_tokens] for r in rows], spec,
                                         self.model, self.config.data.seq_len)
    out, _ = decode.generate(self.model, params, tokens, lengths, jax.random.key(0), spec)
    references = [detokenize(r[cfg.prompt_tokens:length]) for r in rows]
    return text_scores(decode.new_text(out, lengths, detokenize), references)

  def samples(self, params, step: int) -> list[str]:
    """Prompt + generated text for each prompt x sample.num_samples (the cached
    generator); random numbers keyed by sample.seed and the step, so a resumed
    run draws the same ones. Warns when a sample outgrew a level's max_units."""
    cfg = self.config.sample
    spec = decode.from_config(cfg, self.config.model.vocab_size)
    texts = [p.text for p in read_prompts(self.config) for _ in range(cfg.num_samples)]
    tokens, lengths = decode.pack_prompts(texts, spec, self.model, self.config.data.seq_len)
    rng = jax.random.fold_in(jax.random.key(cfg.seed), step)
    out, _ = decode.generate(self.model, params, tokens, lengths, rng, spec)
    _warn_unit_overflow(self.model.spec, np.asarray(out), self.config.data.seq_len)
    return [p + t for p, t in zip(texts, decode.new_text(out, lengths, detokenize))]


def is_main() -> bool:
  """Only process 0 writes logs, samples and summaries (all take part in checkpoints)."""
  return jax.process_index() == 0


def _warn_unit_overflow(spec, buffer, seq_len: int):
  """Warn (naming the field) for each generated row [S] whose prompt + new tokens
  (up to the first PAD) hold more units than a level's max_units: past that point
  the generator's coarse context is wrong. Prompts alone are refused by validation."""
  for i, row in enumerate(buffer):
    real = row[:np.argmax(row == PAD)] if (row == PAD).any() else row
    excess = unit_excess(spec, real, seq_len)
    if excess:
      level, count, bound = excess
      logging.warning("sample %d: prompt + generated text hold %d units at model.levels[%d] "
                      "(max_units=%d); the text after the overflow is unreliable: raise "
                      "model.levels[%d].max_units or lower sample.max_new_tokens",
                      i, count, level, bound, level)


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


def write_samples(workdir, name, texts, config, step: int) -> str:
  """samples/NAME (NAME_2, NAME_3, ... when taken: never overwritten), headed by the
  step, the prompts and every sample.* field, one `# key: JSON value` line each."""
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  stem, ext = os.path.splitext(name)
  header = {"step": step, "prompts": [p.text for p in read_prompts(config)],
            **{f"sample.{k}": v for k, v in config.sample.to_dict().items()}}
  for n in itertools.count(1):
    path = os.path.join(directory, f"{stem}{'' if n == 1 else f'_{n}'}{ext}")
    try:
      f = open(path, "x", encoding="utf-8")   # fails if it exists: nothing is overwritten
    except FileExistsError:
      continue
    with f:
      f.writelines(f"# {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in header.items())
      for i, text in enumerate(texts):
        f.write(f"=== sample {i} ===\n{text}\n")
    return path


class NonFiniteGuard:
  """Stops the run after more than `limit` steps in a row with a non-finite loss
  or gradient norm (the train step skipped each). Reads each step's count one
  step late, so the host never waits for the step it has just dispatched."""

  def __init__(self, limit: int):
    self.limit, self.pending = limit, None

  def check(self, metrics, step: int):
    pending, self.pending = self.pending, (metrics["nonfinite_in_a_row"], step)
    if pending is not None:
      self._check(*pending)

  def flush(self):
    pending, self.pending = self.pending, None
    if pending is not None:
      self._check(*pending)

  def _check(self, count, step):
    if int(count) > self.limit:
      raise TrainingError(
          f"{int(count)} steps in a row up to step {step} had a non-finite loss or gradient "
          f"norm, more than train.max_nonfinite_in_a_row={self.limit}. Each update was "
          "skipped and the checkpoints hold finite values; lower train.lr (or raise "
          "train.warmup_steps), or check the data, then run again to resume.")


# What summary.json and the eval log lines hold beside eval_bpb (README.md, "summary.json")
REFERENCES = ("entropy_floor_bpb", "unigram_bpb")
ETA_BAR = ("{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, "
           "ETA {remaining}, {rate_fmt}{postfix}]")


class Trainer:
  """The train loop of one run: steps, logging, evaluation, checkpoints, preemption.

  `start`: the step it resumes from; `t0`: time.time() when this invocation
  began. The run's wall time (`wall_s` in metrics rows and the summary) adds
  this invocation's to the run's at `start` (its last logged row up to there)."""

  def __init__(self, run: Run, mngr, data_iter, writer, start: int = 0, t0: float | None = None):
    self.run, self.mngr, self.data_iter, self.writer = run, mngr, data_iter, writer
    self.start, self.t0 = start, time.time() if t0 is None else t0
    self.prior_wall_s = float(last_logged(os.path.join(run.workdir, "metrics.jsonl"),
                                          "wall_s", start))
    self.eval_set = run.eval_set()
    self.meter = Throughput(run.tokens_per_step)
    self.last_eval = {}
    stats = pipeline.source_stats(run.config.data)
    self.references = {k: stats[k] for k in REFERENCES if k in stats}

  def wall_s(self) -> float:
    return self.prior_wall_s + time.time() - self.t0

  def steps(self, state, start: int, preempt: Preemption):
    """Train from `start` to train.steps; after a preemption signal, stop once
    the step in flight is done and saved."""
    cfg = self.run.config.train
    guard = NonFiniteGuard(cfg.max_nonfinite_in_a_row)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, unit="step",
               bar_format=ETA_BAR, dynamic_ncols=True, mininterval=1.0, disable=not is_main())
    for step in bar:
      batch = self.run.layout.global_batch(next(self.data_iter))
      state, metrics = self.run.train_step(state, batch)
      done = step + 1
      guard.check(metrics, done)
      evaluated = self.log(state, metrics, done, bar)
      stop = preempt.reached(done)
      checkpoint.save(self.mngr, done, state, self.data_iter, metrics=evaluated or None,
                      force=stop or done == cfg.steps)
      if stop:
        logging.warning("%s: stopped after step %d and saved it; run the same command "
                        "again to resume", preempt.signal, done)
        break
      self.meter.resume(done)   # eval, checkpointing and logging are not training time
    bar.close()
    guard.flush()
    return state

  def log(self, state, metrics, step: int, bar) -> dict:
    """A metrics row on log and eval steps; the eval results when evaluated now."""
    cfg = self.run.config.train
    evaluate = step % cfg.eval_every == 0 or step == cfg.steps
    if not (evaluate or step % cfg.log_every == 0):
      return {}
    loss = float(metrics["loss"])   # blocks, so the meter times real compute
    tokens_per_sec = self.meter.tick(step)   # before anything else runs on the host
    check_units(metrics, self.run.config, step)
    row = {"train_loss": loss, "bpb": bits_per_byte(loss),
           "grad_norm": float(metrics["grad_norm"]), "lr": float(self.run.schedule(step - 1)),
           "tokens_per_sec": tokens_per_sec,
           "skipped_steps": int(metrics["skipped_steps"]), "wall_s": self.wall_s(),
           **{k: float(v) for k, v in metrics.items() if k.startswith("aux_")}}
    evaluated = {}
    if evaluate:   # not training time: the meter is paused until the next step
      evaluated = self.run.evaluate(state.params, self.eval_set)
      flops.probe_peak()   # again: the fastest probe of the run is its peak
    row.update(self.run.speed(row["tokens_per_sec"], step))
    self.last_eval = evaluated or self.last_eval
    self.writer.write(step, {**row, **evaluated})
    if evaluated and is_main():
      bar.clear()
      logging.info("step %d/%d: eval %.4f bits/byte (train %.4f%s)", step, cfg.steps,
                   evaluated["eval_bpb"], row["bpb"], "".join(
                       f", {k.replace('_bpb', '').replace('_', ' ')} {v:.4f}"
                       for k, v in self.references.items()))
      bar.refresh()
    bar.set_postfix(loss=f"{loss:.3f}", bpb=f"{row['bpb']:.3f}",
                    tok_s=f"{row['tokens_per_sec']:,.0f}", mfu=f"{row['mfu']:.1%}", refresh=False)
    return evaluated

  def finish(self, state) -> dict:
    """Final eval (unless the last step had one), samples and summary.json (its
    keys: README.md, "summary.json")."""
    run = self.run
    last_eval = self.last_eval or run.evaluate(state.params, self.eval_set)
    step = int(state.step)
    texts = run.samples(state.params, step)   # every process: generation is SPMD
    flops.probe_peak()                        # at the end too (see flops.probe_peak)
    summary = {**last_eval, **run.continuation_scores(state.params), **self.references,
               "steps": step, "tokens": step * run.tokens_per_step, "wall_s": self.wall_s(),
               "invocation_tokens": (step - self.start) * run.tokens_per_step,
               "invocation_wall_s": time.time() - self.t0,
               "tokens_per_sec": self.meter.average(), "params": param_count(state.params),
               "flops_per_token": run.flops_per_token, **run.speed(self.meter.average(), step)}
    if is_main():
      write_samples(run.workdir, f"step_{step}.txt", texts, run.config, step)
      path = os.path.join(run.workdir, "summary.json")
      set_aside(path)
      write_json(path, summary)
    return summary


def _initial_state(run: Run, mngr, data_iter):
  """(state, step): the newest usable checkpoint's; else parameters from
  checkpoint.init_from with a fresh optimizer at step 0; else the fresh state."""
  checkpoint.set_aside_partial(mngr)
  state, step = checkpoint.restore_newest(mngr, checkpoint.abstract(run.state), data_iter,
                                          move_aside=True)
  if step is not None:
    logging.info("resumed from step %d", step)
    return state, step
  if run.config.checkpoint.init_from:
    params, source = checkpoint.restore_params(run.config.checkpoint.init_from,
                                               checkpoint.abstract(run.state.params))
    logging.info("parameters from %s; the optimizer and the step start afresh", source)
    placed_like = jax.tree.map(lambda a: a.sharding, run.state.opt_state)
    return run.state.replace(params=params,
                             opt_state=jax.device_put(run.tx.init(params), placed_like)), 0
  return run.state, 0


def run(config, workdir: str, mode: str):
  """Validate, check the workdir against the config, then train, eval or sample:
  what launch.py and the experiment runner call. Nothing is written before
  validation passes; training saves config.json once its first step has run."""
  validate(config)
  check_and_save_config(workdir, config, write=False)
  logging.info("mode=%s workdir=%s; config (in full: config.json there):\n%s", mode, workdir,
               config_text(config))
  logging.info("%s", pipeline.describe_corpus(config.data))
  return {"train": train, "eval": evaluate, "sample": sample}[mode](config, os.path.abspath(workdir))


def _value(value) -> str:
  """A config value as its override would spell it; mesh rules as name:axis+axis."""
  if isinstance(value, (list, tuple)) and value and all(
      isinstance(r, (list, tuple)) and len(r) == 2 for r in value):
    axes = lambda t: "-" if t is None else t if isinstance(t, str) else "+".join(t)
    return ",".join(f"{name}:{axes(target)}" for name, target in value)
  return repr(value) if isinstance(value, str) else str(value)


def config_text(config, width: int = 100) -> str:
  """The resolved config in a few lines: `section: field=value ...`, one line per
  model level (config.json in the workdir holds it in full)."""
  lines = []
  for section, fields in config.to_dict().items():
    if not isinstance(fields, dict):
      lines.append(f"{section}={_value(fields)}")
      continue
    levels = fields.pop("levels", []) if section == "model" else []
    text = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if not isinstance(v, dict))
    text += "".join(f" {k}.{kk}={_value(vv)}" for k, v in fields.items()
                    if isinstance(v, dict) for kk, vv in v.items())
    lines += textwrap.wrap(text, width, initial_indent=f"{section}: ", subsequent_indent="  ")
    lines += [f"  levels[{i}]: " + " ".join(f"{k}={_value(v)}" for k, v in level.items())
              for i, level in enumerate(levels)]
  return "\n".join(lines)


def result_line(mode: str, result: dict, workdir: str) -> str:
  """The last line of a train or eval run (launch.py prints it)."""
  if "stopped_by" in result:
    return (f"stopped by {result['stopped_by']} after step {result['step']:,} (saved); run "
            "the same command again to resume")
  if mode == "eval":
    scores = "".join(f", {k} {result[k]:.2f}" for k in ("bleu", "chrf", "rougeL") if k in result)
    path = os.path.join(workdir, f"eval_step_{result['step']}.json")
    return (f"eval of step {result['step']:,}: {result['eval_bpb']:.4f} bits/byte{scores} | "
            f"written to {path}")
  return summary_line(result, workdir)


def train(config, workdir) -> dict:
  """Train, resuming from the workdir's newest usable checkpoint. On SIGTERM or
  SIGINT: save the step reached and return {'stopped_by', 'step', 'exit_s'}."""
  t0 = time.time()
  with Preemption() as preempt:   # a signal during start-up stops after the first step
    run = Run.create(config, workdir)
    save_config = _once(lambda: check_and_save_config(workdir, config, write=is_main()))
    run.train_step = _then(run.train_step, save_config)   # a run failing before step 1
    flops.probe_peak()   # at start-up; again at each evaluation and at the end
    data_iter = iter(run.batches("train", seed=config.seed))   # leaves no config.json
    mngr = checkpoint.manager(workdir, config.checkpoint)
    state, start = _initial_state(run, mngr, data_iter)
    writer = MetricsWriter(workdir, enabled=is_main(), start_step=start)
    trainer = Trainer(run, mngr, data_iter, writer, start, t0)
    try:
      state = trainer.steps(state, start, preempt)
      save_config()   # when no step was left to run
    finally:
      mngr.wait_until_finished()   # a save in flight completes, whatever happened
      writer.close()
  if preempt.signal:
    return {"stopped_by": preempt.signal, "step": int(state.step),
            "exit_s": time.time() - preempt.received_at}
  return trainer.finish(state)


def _once(fn):
  """fn, run on the first call only."""
  calls = []
  def once():
    if not calls:
      calls.append(fn())
  return once


def _then(step_fn, after):
  """step_fn, calling `after()` each time it returns (cheap once `after` is a _once)."""
  def wrapped(*args):
    out = step_fn(*args)
    after()
    return out
  return wrapped


def _restore_latest(run: Run):
  ckpt_dir = os.path.join(run.workdir, "checkpoints")
  state = step = None
  if os.path.isdir(ckpt_dir):
    state, step = checkpoint.restore_newest(checkpoint.read_only_manager(ckpt_dir),
                                            checkpoint.abstract(run.state))
  if step is None:
    raise WorkdirError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point "
                       "--workdir at a trained run")
  return state, step


def evaluate(config, workdir) -> dict:
  run = Run.create(config, workdir)
  state, step = _restore_latest(run)
  result = {"step": step, **run.evaluate(state.params, run.eval_set()),
            **run.continuation_scores(state.params)}
  if is_main():
    write_json(os.path.join(workdir, f"eval_step_{step}.json"), result)
  return result


def sample(config, workdir) -> list[str]:
  run = Run.create(config, workdir)
  state, step = _restore_latest(run)
  texts = run.samples(state.params, step)
  if is_main():
    write_samples(workdir, f"sample_step_{step}_seed_{config.sample.seed}.txt", texts,
                  config, step)
  return texts
