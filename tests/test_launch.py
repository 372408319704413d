"""launch.py end to end: train -> eval -> sample, and bad input that must fail cleanly."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config=configs/lm.py:tiny", "--config.train.steps=6",
        "--config.train.eval_every=3", "--config.train.log_every=3",
        "--config.checkpoint.every_steps=3"]


def launch(*args, check=True):
  proc = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"launch.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def snapshot(workdir: Path) -> dict:
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  launch(*TINY, f"--workdir={workdir}")
  return workdir


def test_train_writes_config_metrics_checkpoints_samples_summary(trained):
  config = json.loads((trained / "config.json").read_text())
  assert config["train"]["steps"] == 6 and config["model"]["levels"][0]["width"] == 64
  rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 6]
  for row in rows:
    assert {"step", "train_loss", "bpb", "tokens_per_sec", "eval_bpb"} <= set(row)
  summary = json.loads((trained / "summary.json").read_text())
  for key in ("eval_bpb", "entropy_floor_bpb", "unigram_bpb", "tokens_per_sec", "steps", "wall_s"):
    assert key in summary
  assert summary["steps"] == 6
  assert summary["eval_bpb"] == pytest.approx(rows[-1]["eval_bpb"])
  assert summary["entropy_floor_bpb"] < summary["unigram_bpb"]
  assert sorted(os.listdir(trained / "checkpoints")) == ["3", "6"]
  assert list((trained / "tensorboard").iterdir())
  samples = (trained / "samples" / "step_6.txt").read_text()
  assert samples.count("=== sample") == 2 and '# prompts: ["= "]' in samples


def test_eval_and_sample_modes_restore_the_checkpoint(trained):
  before = snapshot(trained)
  proc = launch(*TINY, f"--workdir={trained}", "--mode=eval")
  result = json.loads((trained / "eval_step_6.json").read_text())
  summary = json.loads((trained / "summary.json").read_text())
  # same parameters and the same fixed eval set: the same number
  assert result["eval_bpb"] == pytest.approx(summary["eval_bpb"], rel=1e-6)
  sample = [*TINY, f"--workdir={trained}", "--mode=sample", "--config.sample.prompt== Tara =",
            "--config.sample.max_new_tokens=20"]
  proc = launch(*sample)
  assert proc.stdout.count("= Tara =") == 2
  first = snapshot(trained)
  launch(*sample, "--config.sample.strategy=greedy", "--config.sample.num_samples=1")
  written = sorted((trained / "samples").glob("sample_step_6_*.txt"))
  assert [p.name for p in written] == ["sample_step_6_seed_0.txt", "sample_step_6_seed_0_2.txt"]
  assert {k: v for k, v in snapshot(trained).items() if k in first} == first   # nothing overwritten
  assert {k: v for k, v in first.items() if k in before} == before
  header = [l for l in written[1].read_text().splitlines() if l.startswith("# ")]
  assert {'# sample.strategy: "greedy"', '# prompts: ["= Tara ="]', "# step: 6",
          "# sample.max_new_tokens: 20", "# sample.temperature: 0.8"} <= set(header)
  assert len(header) == 2 + len(json.loads((trained / "config.json").read_text())["sample"])


def test_resuming_a_finished_run_with_more_steps_continues_from_its_checkpoint(trained, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  launch(*TINY, f"--workdir={workdir}", "--config.train.steps=9")
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 6, 9]
  assert list(workdir.glob("config-*.json")), "the previous config is kept"


@pytest.mark.parametrize("args,field", [
    (["--config.model.nope=3"], "nope"),
    (["--config.train.steps=0"], "train.steps"),
    (["--config.data.seq_len=-4"], "data.seq_len"),
    (["--config.data.source=text", "--config.data.files=/nonexistent/*.txt"], "data.files"),
    (["--config.data.source=text", "--config.data.files="], "data.files"),
    (["--config.data.source=tfds", "--config.data.tfds_name=no_such_dataset_xyz"], "data.tfds_name"),
    (["--config.data.source=parquet"], "data.source"),
    (["--config.model.levels[0].heads=3"], "model.levels[0].heads"),
])
def test_bad_input_names_the_field_and_exits_2(tmp_path, args, field):
  proc = launch("--config=configs/lm.py:tiny", f"--workdir={tmp_path / 'w'}", *args, check=False)
  assert proc.returncode == 2
  [line] = proc.stderr.splitlines()
  assert line.startswith("launch.py: ") and field in line, proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()


PRESETS = ("presets are tiny, demo, small, base (the flat model) or model=NAME,size=SIZE with "
           "NAME one of flat, megabyte, hourglass, spacebyte, mgm3, megabyte_lstm, mgm3_gru, e.g. "
           "configs/lm.py:model=mgm3,size=demo")


@pytest.mark.parametrize("args,line", [
    (["--config=configs/lm.py:dmeo"],
     f"launch.py: configs/lm.py: unknown preset size 'dmeo'; {PRESETS}"),
    (["--config=configs/lm.py:model=mgm4,size=tiny"],
     f"launch.py: configs/lm.py: unknown model 'mgm4'; {PRESETS}"),
    (["--config=configs/lm.py:tiny", "--config.train.step=3"],
     "launch.py: bad flag or config override (overrides given: --config.train.step=3): "
     "'step' Did you mean \"steps\" instead of \"step\"?; check the field name against the "
     "config file and the value's type"),
    (["--config=configs/nonexistent.py"],
     "launch.py: --config: [Errno 2] No such file or directory: 'configs/nonexistent.py'"),
])
def test_a_bad_preset_or_field_is_one_plain_line(tmp_path, args, line):
  proc = launch(*args, f"--workdir={tmp_path / 'w'}", check=False)
  assert proc.returncode == 2 and proc.stderr.splitlines() == [line]
  assert not (tmp_path / "w").exists()


def test_help_exits_0():
  proc = launch("--help", check=False)
  assert proc.returncode == 0 and "--workdir" in proc.stdout + proc.stderr


def test_empty_text_files_are_refused(tmp_path):
  (tmp_path / "a.txt").write_text("")
  proc = launch("--config=configs/lm.py:tiny", f"--workdir={tmp_path / 'w'}",
                "--config.data.source=text", f"--config.data.files={tmp_path}/*.txt", check=False)
  assert proc.returncode != 0 and "data.files" in proc.stderr and "Traceback" not in proc.stderr


def test_a_workdir_of_another_run_is_refused_and_left_untouched(trained):
  before = snapshot(trained)
  proc = launch(*TINY, f"--workdir={trained}", "--config.model.levels[0].width=32", check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      f"launch.py: workdir '{trained}' holds another run, whose config differs in "
      "model.levels[0].width (64 there, 32 here). Use another --workdir, or the same model "
      "and data config to resume it."]
  assert snapshot(trained) == before
