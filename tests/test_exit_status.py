"""launch.py's exit status and what it prints: 2 and one line naming the field
for bad input (nothing written), 1 and one line when non-finite steps stop the
run."""
import subprocess
import sys
from pathlib import Path

import pytest

from configs.lm import get_config
from mgm.workdir import check_and_save_config

ROOT = Path(__file__).resolve().parents[1]


def launch(workdir, *args):
  return subprocess.run([sys.executable, "launch.py", "--config=configs/lm.py:tiny",
                         f"--workdir={workdir}", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def error_line(stderr: str) -> str:
  """The one line launch.py printed for the user (its log lines aside)."""
  lines = [line for line in stderr.splitlines() if line.startswith("launch.py:")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def files(workdir: Path) -> dict:
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_an_invalid_value_exits_2_with_one_line_naming_the_field_writing_nothing(tmp_path):
  proc = launch(tmp_path / "w", "--config.train.steps=0")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [error_line(proc.stderr)], "one line, nothing else"
  assert "config field `train.steps`" in error_line(proc.stderr)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("field", ["model.levels[0].width", "data.corpus_seed"])
def test_a_workdir_of_another_run_exits_2_with_one_line_leaving_it_unchanged(tmp_path, field):
  """The workdir holds the config.json of a run with another model or data config
  (written as a run writes it)."""
  other = get_config("tiny")
  if field.startswith("model."):
    other.model.levels[0].width = 32
  else:
    other.data.corpus_seed = 1
  check_and_save_config(str(tmp_path), other)
  before = files(tmp_path)
  proc = launch(tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [error_line(proc.stderr)], "one line, nothing else"
  assert field in error_line(proc.stderr)
  assert files(tmp_path) == before


def test_non_finite_steps_in_a_row_exit_1_with_one_line(tmp_path):
  """lr=1e30: the first update makes every later gradient norm non-finite; the
  second such step in a row is more than max_nonfinite_in_a_row=1."""
  proc = launch(tmp_path, "--config.train.steps=6", "--config.train.log_every=1",
                "--config.train.lr=1e30", "--config.train.warmup_steps=0",
                "--config.train.max_nonfinite_in_a_row=1")
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = error_line(proc.stderr)
  assert line.startswith("launch.py: training stopped: 2 steps in a row up to step 3 ")
  assert "train.max_nonfinite_in_a_row=1" in line and "Traceback" not in proc.stderr
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 3 and all('"grad_norm": NaN' in row for row in rows[1:])
