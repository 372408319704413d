"""The three modes of a run: train (with periodic eval, checkpoints, samples), eval, sample.

Each builds a `Setup` (mgm/setup.py: model, optimizer, sharded state, jitted
steps) and reads its data through mgm/batches.py; evaluation is
mgm/evaluation.py, samples mgm/samples.py."""
import os
import textwrap
import time

import jax
from absl import logging
from tqdm import tqdm

from mgm import batches, checkpoint, conditioned, evaluation, files, flops, profiling, samples
from mgm.data import mixture, pipeline
from mgm.errors import ConfigError, TrainingError, WorkdirError
from mgm.files import MetricsWriter, last_logged, set_aside, write_json
from mgm.metrics import bits_per_byte, summary_line
from mgm.preemption import Preemption
from mgm.setup import Setup
from mgm.train import param_count
from mgm.validate import validate
from mgm.workdir import check_and_save_config


def is_main() -> bool:
  """Only process 0 writes logs, samples and summaries (all take part in checkpoints)."""
  return jax.process_index() == 0


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


def task_metrics(metrics, names) -> dict:
  """A task mixture's per-task train loss (nats/token), bits/byte and target tokens
  from the train step's metrics: {loss_<task>, bpb_<task>, tokens_<task>} for each
  name of `names` (mixture.names; () without tasks)."""
  row = {}
  for name in names:
    loss = float(metrics[f"loss_{name}"])
    row.update({f"loss_{name}": loss, f"bpb_{name}": bits_per_byte(loss),
                f"tokens_{name}": float(metrics[f"tokens_{name}"])})
  return row


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

  def __init__(self, setup: Setup, workdir: str, mngr, data_iter, writer, start: int = 0,
               t0: float | None = None):
    self.setup, self.config, self.workdir = setup, setup.config, workdir
    self.mngr, self.data_iter, self.writer = mngr, data_iter, writer
    self.start, self.t0 = start, time.time() if t0 is None else t0
    self.prior_wall_s = float(last_logged(os.path.join(workdir, "metrics.jsonl"),
                                          "wall_s", start))
    self.eval_set = batches.eval_set(self.config, setup.placement)
    self.meter = Throughput(setup.tokens_per_step)
    self.profiler = profiling.Profiler(self.config.profile.steps, workdir, enabled=is_main())
    self.last_eval = {}
    stats = pipeline.source_stats(self.config.data)
    self.references = {k: stats[k] for k in REFERENCES if k in stats}
    self.task_names = mixture.names(self.config.data)

  def wall_s(self) -> float:
    return self.prior_wall_s + time.time() - self.t0

  def save_config(self):
    """config.json: once the first step has run (a run failing before it leaves none)."""
    check_and_save_config(self.workdir, self.config, write=is_main())

  def steps(self, state, start: int, preempt: Preemption):
    """Train from `start` to train.steps; after a preemption signal, stop once
    the step in flight is done and saved."""
    cfg = self.config.train
    guard = NonFiniteGuard(cfg.max_nonfinite_in_a_row)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, unit="step",
               bar_format=ETA_BAR, dynamic_ncols=True, mininterval=1.0, disable=not is_main())
    if start >= cfg.steps:
      self.save_config()   # no step left to run
    for step in bar:
      batch = self.setup.placement.global_batch(next(self.data_iter))
      self.profiler.before(step + 1, state)
      state, metrics = self.setup.train_step(state, batch)
      self.profiler.after(step + 1, (state, metrics))
      if step == start:
        self.save_config()
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
    cfg = self.config.train
    evaluate = step % cfg.eval_every == 0 or step == cfg.steps
    if not (evaluate or step % cfg.log_every == 0):
      return {}
    loss = float(metrics["loss"])   # blocks, so the meter times real compute
    tokens_per_sec = self.meter.tick(step)   # before anything else runs on the host
    check_units(metrics, self.config, step)
    row = {"train_loss": loss, "bpb": bits_per_byte(loss),
           "grad_norm": float(metrics["grad_norm"]), "lr": float(self.setup.schedule(step - 1)),
           "tokens_per_sec": tokens_per_sec,
           "skipped_steps": int(metrics["skipped_steps"]), "wall_s": self.wall_s(),
           **{k: float(v) for k, v in metrics.items()
              if k.startswith(("aux_", "adv_", "distill_"))},
           **task_metrics(metrics, self.task_names)}
    evaluated = {}
    if evaluate:   # not training time: the meter is paused until the next step
      evaluated = evaluation.held_out_loss(self.setup, state.params, self.eval_set)
      flops.probe_peak()   # again: the fastest probe of the run is its peak
    row.update(self.setup.speed(row["tokens_per_sec"], step))
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
    setup, config = self.setup, self.config
    last_eval = self.last_eval or evaluation.held_out_loss(setup, state.params, self.eval_set)
    step = int(state.step)
    texts = samples.draw(config, setup.model, state.params, step)   # every process: SPMD
    flops.probe_peak()                        # at the end too (see flops.probe_peak)
    summary = {**last_eval, **evaluation.continuation_scores(config, setup.model, state.params),
               **conditioned.heldout_scores(config, setup.model, state.params, step,
                                            self.workdir if is_main() else None),
               **self.references,
               "steps": step, "tokens": step * setup.tokens_per_step, "wall_s": self.wall_s(),
               "invocation_tokens": (step - self.start) * setup.tokens_per_step,
               "invocation_wall_s": time.time() - self.t0,
               "tokens_per_sec": self.meter.average(), "params": param_count(state.params),
               "flops_per_token": setup.flops_per_token,
               **setup.speed(self.meter.average(), step),
               **({"distill_teachers": setup.teachers.records} if setup.teachers else {})}
    if is_main():
      samples.write(self.workdir, f"step_{step}.txt", texts, config, step)
      path = os.path.join(self.workdir, "summary.json")
      set_aside(path)
      write_json(path, summary)
    return summary


def _initial_state(setup: Setup, mngr, data_iter):
  """(state, step): the newest usable checkpoint's; else parameters from
  checkpoint.init_from with a fresh optimizer at step 0; else the fresh state."""
  checkpoint.set_aside_partial(mngr)
  state, step = checkpoint.restore_newest(mngr, checkpoint.abstract(setup.state), data_iter,
                                          move_aside=True)
  if step is not None:
    logging.info("resumed from step %d", step)
    return state, step
  if setup.config.checkpoint.init_from:
    params, source = checkpoint.restore_params(setup.config.checkpoint.init_from,
                                               checkpoint.abstract(setup.state.params))
    logging.info("parameters from %s; the optimizer and the step start afresh", source)
    placed_like = jax.tree.map(lambda a: a.sharding, setup.state.opt_state)
    return setup.state.replace(params=params,
                               opt_state=jax.device_put(setup.tx.init(params), placed_like)), 0
  return setup.state, 0


def run_mode(config, workdir: str, mode: str):
  """Validate, check the workdir against the config, then train, eval or sample:
  what launch.py and the experiment runner call. Nothing is written before
  validation passes; training saves config.json once its first step has run."""
  validate(config, mode)
  check_and_save_config(workdir, config, write=False)
  logging.info("mode=%s workdir=%s; config (in full: config.json there):\n%s", mode, workdir,
               config_text(config))
  logging.info("%s", pipeline.describe_corpus(config.data))
  modes = {"train": train, "eval": evaluate, "sample": sample}
  return modes[mode](config, os.fspath(files.path(workdir)))


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
    setup = Setup.create(config, teachers=True)   # before anything is written
    flops.probe_peak()   # at start-up; again at each evaluation and at the end
    data_iter = iter(batches.train_stream(config, setup.placement, seed=config.seed))
    mngr = checkpoint.manager(workdir, config.checkpoint)
    state, start = _initial_state(setup, mngr, data_iter)
    writer = MetricsWriter(workdir, enabled=is_main(), start_step=start)
    trainer = Trainer(setup, workdir, mngr, data_iter, writer, start, t0)
    try:
      state = trainer.steps(state, start, preempt)
    finally:
      trainer.profiler.stop()      # a trace in progress is written, whatever happened
      mngr.wait_until_finished()   # a save in flight completes, whatever happened
      writer.close()
  if preempt.signal:
    return {"stopped_by": preempt.signal, "step": int(state.step),
            "exit_s": time.time() - preempt.received_at}
  return trainer.finish(state)


def _restore_latest(setup: Setup, workdir: str):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  state = step = None
  if files.path(ckpt_dir).is_dir():
    state, step = checkpoint.restore_newest(checkpoint.read_only_manager(ckpt_dir),
                                            checkpoint.abstract(setup.state))
  if step is None:
    raise WorkdirError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point "
                       "--workdir at a trained run")
  return state, step


def evaluate(config, workdir) -> dict:
  setup = Setup.create(config)
  state, step = _restore_latest(setup, workdir)
  eval_set = batches.eval_set(config, setup.placement)
  result = {"step": step, **evaluation.held_out_loss(setup, state.params, eval_set),
            **evaluation.continuation_scores(config, setup.model, state.params),
            **conditioned.heldout_scores(config, setup.model, state.params, step,
                                         workdir if is_main() else None)}
  if is_main():
    write_json(os.path.join(workdir, f"eval_step_{step}.json"), result)
  return result


def sample(config, workdir) -> list[str]:
  setup = Setup.create(config)
  state, step = _restore_latest(setup, workdir)
  texts = samples.draw(config, setup.model, state.params, step)
  if is_main():
    samples.write(workdir, f"sample_step_{step}_seed_{config.sample.seed}.txt", texts,
                  config, step)
  return texts
