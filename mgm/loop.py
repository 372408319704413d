"""The three modes of a run: train (with periodic eval, checkpoints, samples), eval, sample."""
import dataclasses
import os
import time

import jax
from absl import logging
from tqdm import tqdm

from mgm import checkpoint, flops, sharding
from mgm.data import pipeline
from mgm import decode
from mgm.data.tokenizer import decode as detokenize
from mgm.errors import ConfigError, TrainingError, WorkdirError
from mgm.metrics import (MetricsWriter, bits_per_byte, perplexity, set_aside, text_scores,
                         write_json)
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.preemption import Preemption
from mgm.validate import validate
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
    rows = [row for batch in pipeline.eval_batches(
                self.config.data, batch_size=self.config.train.batch_size,
                num_batches=self.config.train.eval_batches)
            for row, mask in zip(batch["tokens"], batch["mask"]) if mask[:length].all()]
    rows = rows[:cfg.continuations]
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
    run draws the same ones."""
    cfg = self.config.sample
    spec = decode.from_config(cfg, self.config.model.vocab_size)
    prompts = [p for p in read_prompts(cfg) for _ in range(cfg.num_samples)]
    tokens, lengths = decode.pack_prompts(prompts, spec, self.model, self.config.data.seq_len)
    rng = jax.random.fold_in(jax.random.key(cfg.seed), step)
    out, _ = decode.generate(self.model, params, tokens, lengths, rng, spec)
    return [p + t for p, t in zip(prompts, decode.new_text(out, lengths, detokenize))]


def is_main() -> bool:
  """Only process 0 writes logs, samples and summaries (all take part in checkpoints)."""
  return jax.process_index() == 0


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


def write_samples(workdir, name, texts):
  path = os.path.join(workdir, "samples", name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
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


class Trainer:
  """The train loop of one run: steps, logging, evaluation, checkpoints, preemption."""

  def __init__(self, run: Run, mngr, data_iter, writer):
    self.run, self.mngr, self.data_iter, self.writer = run, mngr, data_iter, writer
    self.eval_set = run.eval_set()
    self.meter = Throughput(run.tokens_per_step)
    self.last_eval = {}

  def steps(self, state, start: int, preempt: Preemption):
    """Train from `start` to train.steps; after a preemption signal, stop once
    the step in flight is done and saved."""
    cfg = self.run.config.train
    guard = NonFiniteGuard(cfg.max_nonfinite_in_a_row)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=not is_main())
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
    check_units(metrics, self.run.config, step)
    row = {"train_loss": loss, "bpb": bits_per_byte(loss),
           "grad_norm": float(metrics["grad_norm"]), "lr": float(self.run.schedule(step - 1)),
           "tokens_per_sec": self.meter.tick(step),
           "skipped_steps": int(metrics["skipped_steps"]),
           **{k: float(v) for k, v in metrics.items() if k.startswith("aux_")}}
    row.update(self.run.speed(row["tokens_per_sec"], step))
    evaluated = self.run.evaluate(state.params, self.eval_set) if evaluate else {}
    self.last_eval = evaluated or self.last_eval
    self.writer.write(step, {**row, **evaluated})
    bar.set_postfix(loss=f"{loss:.3f}", bpb=f"{row['bpb']:.3f}",
                    tok_s=f"{row['tokens_per_sec']:,.0f}", mfu=f"{row['mfu']:.1%}", refresh=False)
    return evaluated

  def finish(self, state, wall_s: float) -> dict:
    """Final eval (unless the last step had one), samples and summary.json."""
    run = self.run
    last_eval = self.last_eval or run.evaluate(state.params, self.eval_set)
    step = int(state.step)
    texts = run.samples(state.params, step)   # every process: generation is SPMD
    summary = {**last_eval, **run.continuation_scores(state.params),
               **pipeline.source_stats(run.config.data), "steps": step,
               "wall_s": wall_s, "tokens_per_sec": self.meter.average(),
               "params": param_count(state.params), "flops_per_token": run.flops_per_token,
               **run.speed(self.meter.average(), step)}
    if is_main():
      write_samples(run.workdir, f"step_{step}.txt", texts)
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
  """Validate, check the workdir against the config (and save it when training),
  then train, eval or sample: what launch.py and the experiment runner call."""
  validate(config)
  check_and_save_config(workdir, config, write=(mode == "train" and is_main()))
  logging.info("mode=%s workdir=%s\n%s", mode, workdir, config)
  return {"train": train, "eval": evaluate, "sample": sample}[mode](config, os.path.abspath(workdir))


def train(config, workdir) -> dict:
  """Train, resuming from the workdir's newest usable checkpoint. On SIGTERM or
  SIGINT: save the step reached and return {'stopped_by', 'step', 'exit_s'}."""
  t0 = time.time()
  with Preemption() as preempt:   # a signal during start-up stops after the first step
    run = Run.create(config, workdir)
    data_iter = iter(run.batches("train", seed=config.seed))
    mngr = checkpoint.manager(workdir, config.checkpoint)
    state, start = _initial_state(run, mngr, data_iter)
    writer = MetricsWriter(workdir, enabled=is_main(), start_step=start)
    trainer = Trainer(run, mngr, data_iter, writer)
    try:
      state = trainer.steps(state, start, preempt)
    finally:
      mngr.wait_until_finished()   # a save in flight completes, whatever happened
      writer.close()
  if preempt.signal:
    return {"stopped_by": preempt.signal, "step": int(state.step),
            "exit_s": time.time() - preempt.received_at}
  return trainer.finish(state, time.time() - t0)


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
    write_samples(workdir, f"sample_step_{step}_seed_{config.sample.seed}.txt", texts)
  return texts
