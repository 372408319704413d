"""The profiler hook (--config.profile.steps=a,b, mgm/profiling.py) and the trace
summary (benchmarks/profile_summary.py):

- a tiny run (mgm.loop.run_mode in this process) traces exactly steps 2 and 3
  into <workdir>/profile, and the summary of that trace has ops with positive
  times, among them a matmul;
- the Profiler starts before step a and stops after step b (from 1), and writes
  nothing when profile.steps is "" or on a process other than 0;
- the summary sums a hand-made Chrome trace as it should.
Bad values of profile.steps are refused before anything is written in
tests/test_config_audit.py (BAD)."""
import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_summary
from configs.lm import get_config
from mgm import loop, profiling

from loop_hooks import Crash, after_each_step, crash_after

TRAIN_STEP = "jit_train_step"   # the XLA program of mgm.train's train_step


def spy_on_trace(monkeypatch, events: list):
  """Record 'start' and 'stop' in `events` when the real trace starts and stops."""
  start, stop = jax.profiler.start_trace, jax.profiler.stop_trace

  def spy_start(*args, **kwargs):
    events.append("start")
    return start(*args, **kwargs)

  def spy_stop():
    events.append("stop")
    return stop()
  monkeypatch.setattr(jax.profiler, "start_trace", spy_start)
  monkeypatch.setattr(jax.profiler, "stop_trace", spy_stop)


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
  """A 4-step tiny run with profile.steps=2,3; (workdir, events): 'start', 'stop'
  and each step number once the step is logged."""
  config = get_config("tiny")
  config.train.update(steps=4, warmup_steps=1, log_every=1, eval_every=4)
  config.checkpoint.every_steps = 4
  config.profile.steps = "2,3"
  workdir, events = tmp_path_factory.mktemp("profiled"), []
  with pytest.MonkeyPatch.context() as monkeypatch:
    spy_on_trace(monkeypatch, events)
    after_each_step(monkeypatch, events.append)
    loop.run_mode(config, str(workdir), "train")
  return workdir, events


def test_a_run_traces_steps_a_to_b_into_its_workdir(profiled_run):
  workdir, events = profiled_run
  # the trace starts once step 1 is done and stops with step 3 dispatched (then logged)
  assert events == [1, "start", 2, "stop", 3, 4]
  files = profile_summary.trace_files(str(workdir / "profile"))
  assert len(files) == 1 and os.path.dirname(files[0]).startswith(
      str(workdir / "profile" / "plugins" / "profile"))
  assert [f for f in os.listdir(os.path.dirname(files[0])) if f.endswith(".xplane.pb")]
  summary = profile_summary.summarize(str(workdir), module=TRAIN_STEP)
  executions = {r.name: r.count for r in summary["modules"]}
  assert executions == {TRAIN_STEP: 2}   # steps 2 and 3, each run to its end


def test_a_run_that_dies_inside_the_range_still_writes_its_trace(tmp_path, monkeypatch):
  config = get_config("tiny")
  config.train.update(steps=4, warmup_steps=1, log_every=1)
  config.profile.steps = "2,3"
  crash_after(monkeypatch, at_step=2)
  with pytest.raises(Crash):
    loop.run_mode(config, str(tmp_path), "train")
  summary = profile_summary.summarize(str(tmp_path), module=TRAIN_STEP)
  assert [(r.name, r.count) for r in summary["modules"]] == [(TRAIN_STEP, 1)]   # step 2
  jax.profiler.start_trace(str(tmp_path / "again"))      # and no trace left open
  jax.profiler.stop_trace()


def test_the_summary_of_a_run_has_timed_ops_with_a_matmul(profiled_run):
  summary = profile_summary.summarize(str(profiled_run[0]))
  ops = summary["ops"]
  assert len(ops) >= 10 and all(r.total_ms > 0 and r.count >= 1 for r in ops)
  assert [r.total_ms for r in ops] == sorted((r.total_ms for r in ops), reverse=True)
  assert sum(r.share for r in ops) == pytest.approx(1.0)
  matmuls = [r for r in ops if r.kind == "matmul"]   # kinds from the HLO in the xplane.pb
  assert matmuls and matmuls[0].module == TRAIN_STEP, [(r.name, r.kind) for r in ops[:20]]
  assert {"fwd", "bwd"} <= {r.source.split("/")[0] for r in matmuls if r.module == TRAIN_STEP}
  assert any("/mlp/" in r.source and r.source.endswith("dot_general") for r in matmuls)
  assert [r for r in matmuls if not r.name.startswith("dot")], "no fusion told a matmul by its HLO"
  kinds = {r.name: r.share for r in summary["kinds"]}
  assert kinds["matmul"] > 0 and kinds["elementwise"] > 0
  parts = {r.name: r.share for r in summary["parts"]}   # tiny: one level of 2 blocks
  assert parts["level_0/attn"] > 0 and parts["level_0/mlp"] > 0 and parts["unembed"] > 0
  assert sum(parts.values()) == pytest.approx(1.0)
  text = profile_summary.format_summary(summary, top=5)
  assert f"| {ops[0].name} ({TRAIN_STEP}) | {ops[0].kind} | {ops[0].source} | {ops[0].count} |" \
      in text


def steps_of(n: int):
  """n jitted functions, one XLA program each (jit_step_1 ... jit_step_n), each
  long enough (milliseconds) to be still running when its call returns."""
  def make(i):
    def body(x):
      for _ in range(4):
        x = jnp.tanh(x @ x)
      return x + i
    body.__name__ = f"step_{i}"
    return jax.jit(body)
  return [make(i) for i in range(1, n + 1)]


def run_steps(profiler, steps, x):
  for i, step in enumerate(steps, start=1):
    profiler.before(i, x)
    x = step(x)
    profiler.after(i, x)
  profiler.stop(x)
  jax.block_until_ready(x)   # nothing left running into the next test's trace


def traced_programs(workdir) -> dict:
  summary = profile_summary.summarize(str(workdir))
  return {r.name: r.count for r in summary["modules"]}


@pytest.fixture(scope="module")
def programs():
  steps, x = steps_of(5), jnp.ones((512, 512)) / 512
  for step in steps:
    jax.block_until_ready(step(x))   # compiled before any trace
  return steps, x


@pytest.mark.parametrize("spec,traced", [("2,3", {2, 3}), ("1,1", {1}), ("4,5", {4, 5})])
def test_the_profiler_traces_steps_a_to_b(tmp_path, programs, spec, traced):
  steps, x = programs
  run_steps(profiling.Profiler(spec, str(tmp_path)), steps, x)
  assert traced_programs(tmp_path) == {f"jit_step_{i}": 1 for i in traced}


@pytest.mark.parametrize("spec,enabled", [("", True), ("2,3", False)],
                         ids=["unset", "not_process_0"])
def test_nothing_is_traced_when_unset_or_not_process_0(tmp_path, programs, spec, enabled):
  steps, x = programs
  run_steps(profiling.Profiler(spec, str(tmp_path), enabled=enabled), steps, x)
  assert not os.path.exists(profiling.trace_dir(str(tmp_path)))
  assert os.listdir(tmp_path) == []


def test_a_resumed_run_inside_the_range_traces_from_its_first_step(tmp_path, programs):
  steps, x = programs
  profiler = profiling.Profiler("2,4", str(tmp_path))
  for i, step in list(enumerate(steps, start=1))[2:]:   # resumed after step 2
    profiler.before(i, x)
    x = step(x)
    profiler.after(i, x)
  jax.block_until_ready(x)
  assert not profiler.active
  assert traced_programs(tmp_path) == {"jit_step_3": 1, "jit_step_4": 1}


def write_trace(path, events):
  """A Chrome trace as jax writes it: {'traceEvents': [...]}, gzipped."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.open(path, "wt", encoding="utf-8") as f:
    json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)


def op(name, ts, dur, run_id, module="jit_f"):
  return {"ph": "X", "pid": 1, "tid": 2, "ts": ts, "dur": dur, "name": name,
          "args": {"hlo_module": module, "hlo_op": name, "run_id": run_id}}


def test_the_summary_sums_each_op_of_the_newest_trace(tmp_path):
  old = tmp_path / "profile" / "plugins" / "profile" / "2026_01_01_00_00_00" / "h.trace.json.gz"
  write_trace(str(old), [op("dot.1", 0, 9000, "a")])
  new = tmp_path / "profile" / "plugins" / "profile" / "2026_01_02_00_00_00" / "h.trace.json.gz"
  write_trace(str(new), [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 500, "name": "$loop.py steps"},
      op("dot.1", 0, 300, "a"), op("add_fusion", 300, 100, "a"),
      op("dot.1", 1000, 500, "b"), op("add_fusion", 1500, 50, "b"),
      op("convert_fusion", 1550, 50, "b"),
      op("multiply.2", 2000, 1000, "c", module="jit_g")])
  summary = profile_summary.summarize(str(tmp_path))
  assert summary["files"] == [str(new)]
  got = [(r.name, r.module, r.count, r.total_ms, r.share) for r in summary["ops"]]
  assert got == [("multiply.2", "jit_g", 1, 1.0, 0.5), ("dot.1", "jit_f", 2, 0.8, 0.4),
                 ("add_fusion", "jit_f", 2, 0.15, 0.075),
                 ("convert_fusion", "jit_f", 1, 0.05, 0.025)]
  assert [(r.name, r.count, r.total_ms) for r in summary["modules"]] == [
      ("jit_f", 2, 1.0), ("jit_g", 1, 1.0)]
  assert summary["span_ms"] == {"jit_f": pytest.approx(0.5), "jit_g": pytest.approx(1.0)}
  assert summary["window_ms"] == 3.0 and summary["busy"] == pytest.approx(2.0 / 3.0)
  assert [(r.name, r.kind, r.source) for r in summary["ops"]] == [
      ("multiply.2", "other", ""), ("dot.1", "matmul", ""), ("add_fusion", "elementwise", ""),
      ("convert_fusion", "elementwise", "")]   # kinds by name: no xplane.pb here
  only_f = profile_summary.summarize(str(tmp_path), module="jit_f")
  assert [r.name for r in only_f["ops"]] == ["dot.1", "add_fusion", "convert_fusion"]


def test_the_summary_says_when_there_is_no_trace(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    profile_summary.main([str(tmp_path)])
  assert "--config.profile.steps=a,b" in str(exit_.value.code)
