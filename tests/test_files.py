"""A run's files go through etils.epath: a workdir may be a local path (str,
pathlib, with ~ or relative) or an object-store URL such as gs://bucket/run.

No bucket is reachable in tests: `object_store` redirects every gs:// path that
epath is asked about to a local directory (etils.epath.testing.mock_epath), so a
write that bypassed epath (builtin open, os.*) would miss it and fail; like an
object store, it cannot append to a file."""
import contextlib
import io
import json
import os
import pathlib

import pytest
import tensorboardX
from etils import epath
from etils.epath import testing as epath_testing

from configs.lm import get_config
from mgm import files, outputs, samples
from mgm.errors import WorkdirError
from mgm.workdir import check_and_save_config

URL = "gs://bucket/run"


@contextlib.contextmanager
def object_store(local: pathlib.Path):
  """gs://... -> `local`/gs/... for every epath operation."""
  def moved(p):
    text = os.fspath(p)
    return str(local / "gs" / text[len("gs://"):]) if text.startswith("gs://") else text

  one = lambda fn, p, *args, **kwargs: fn(moved(p), *args, **kwargs)

  def open_(fn, p, mode):
    if os.fspath(p).startswith("gs://") and "a" in mode:
      raise io.UnsupportedOperation("an object store does not append")
    return fn(moved(p), mode)
  two = lambda fn, src, dst, *args, **kwargs: fn(moved(src), moved(dst), *args, **kwargs)
  with epath_testing.mock_epath(
      open=open_, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, rename=two, replace=two, copy=two):
    yield local / "gs" / URL[len("gs://"):]


def test_a_urls_workdir_keeps_its_scheme_and_a_local_one_is_made_absolute(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert os.fspath(files.path(URL)) == URL
  assert files.path("runs/a") == epath.Path(tmp_path / "runs" / "a")
  assert files.path(pathlib.Path("runs/a")) == files.path("runs/a")
  assert files.path("~/runs/a") == epath.Path(tmp_path / "home" / "runs" / "a")


def test_config_summary_logs_samples_and_outputs_are_written_to_a_url_workdir(tmp_path):
  config = get_config("tiny")
  with object_store(tmp_path) as stored:
    check_and_save_config(URL, config)
    files.write_json(f"{URL}/summary.json", {"eval_bpb": 2.0})
    files.write_json(f"{URL}/summary.json", {"eval_bpb": 1.5})   # atomically replaced
    kept = files.set_aside(f"{URL}/summary.json")
    log = f"{URL}/metrics.jsonl"
    epath.Path(log).write_text("".join(json.dumps({"step": s, "wall_s": s}) + "\n"
                                       for s in (1, 2, 3)))
    files.truncate_after(log, 2)
    wall_s = files.last_logged(log, "wall_s", 9)
    sample = samples.write(URL, "step_3.txt", ["hello"], config, 3)
    output = outputs.write_outputs(URL, 3, [{"id": 0, "generated": "hi"}])
  assert json.loads((stored / "config.json").read_text())["model"]["levels"]
  assert kept.startswith(f"{URL}/summary-") and not (stored / "summary.json").exists()
  assert json.loads((stored / os.path.basename(kept)).read_text()) == {"eval_bpb": 1.5}
  assert wall_s == 2, "the row of step 3 was cut"
  assert len(list(stored.glob("metrics-*.jsonl"))) == 1, "the log as it was is kept"
  assert sample == f"{URL}/samples/step_3.txt"
  assert "hello" in (stored / "samples" / "step_3.txt").read_text()
  assert output == f"{URL}/outputs/step_3.jsonl"
  assert json.loads((stored / "outputs" / "step_3.jsonl").read_text())["generated"] == "hi"
  assert not [p for p in stored.rglob("*.tmp")], "every .tmp file was renamed into place"


def test_a_local_workdir_given_as_a_pathlib_path_writes_the_same_files(tmp_path):
  config = get_config("tiny")
  check_and_save_config(tmp_path / "run", config)
  files.write_json(tmp_path / "run" / "summary.json", {"eval_bpb": 1.5})
  assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"eval_bpb": 1.5}
  assert (tmp_path / "run" / "config.json").exists()
  config.model.levels[0].width *= 2
  with pytest.raises(WorkdirError, match=f"workdir '{tmp_path / 'run'}' holds another run"):
    check_and_save_config(tmp_path / "run", config)


class Events:
  """Stands in for tensorboardX's SummaryWriter (gs:// needs google-cloud-storage)."""

  def __init__(self, logdir, purge_step=None):
    self.logdir = logdir

  def add_scalar(self, *args):
    pass

  def close(self):
    pass


def test_the_metrics_log_of_a_url_workdir_is_rewritten_whole_and_cut_back_on_resume(
    tmp_path, monkeypatch):
  monkeypatch.setattr(tensorboardX, "SummaryWriter", Events)
  with object_store(tmp_path) as stored:
    epath.Path(URL).mkdir(parents=True)   # as the checkpoint manager does first
    writer = files.MetricsWriter(URL)
    for step in (1, 2):
      writer.write(step, {"train_loss": 1.0 / step})
    writer.close()
    resumed = files.MetricsWriter(URL, start_step=1)   # step 2 is logged again
    resumed.write(2, {"train_loss": 0.25})
    resumed.close()
  rows = [json.loads(line) for line in (stored / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.25}]
  assert len(list(stored.glob("metrics-*.jsonl"))) == 1, "the log as it was is kept"
