"""Conditioned runs end to end (issue 12): a captioning run scores and writes
its held-out captions, --mode=sample captions image files, an encoder-decoder
trains alike on a (2, 2, 2) mesh and on one device, and bad conditioned input
is refused naming the field before anything is written (exit 2 from launch.py)."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import caption, seq2seq
from mgm import loop
from mgm.data import paired, pipeline
from mgm.errors import ConfigError
from test_sharding import train as train_steps

ROOT = Path(__file__).resolve().parents[1]


def caption_config(**train):
  config = caption.get_config("tiny")
  config.train.update(steps=4, eval_every=4, log_every=2, **train)
  config.checkpoint.every_steps = 4
  config.eval.examples = 4
  return config


def write_pngs(directory: Path, images, names):
  directory.mkdir(parents=True, exist_ok=True)
  for image, name in zip(images, names):
    Image.fromarray(np.asarray(image)).save(directory / name)
  return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("caption")
  config = caption_config()
  summary = loop.run_mode(config, str(workdir), "train")
  return config, workdir, summary


def test_a_caption_run_scores_and_writes_its_held_out_captions(trained):
  config, workdir, summary = trained
  for key in ("heldout_exact_match", "heldout_bleu", "heldout_chrf", "heldout_cider",
              "heldout_rougeL"):
    assert 0.0 <= summary[key] <= 100.0, key
  rows = [json.loads(line) for line in (workdir / "outputs" / "step_4.jsonl").read_text()
          .splitlines()]
  examples = paired.held_out_examples(config.data, 4)
  assert [r["references"] for r in rows] == [e["references"] for e in examples]
  assert all(isinstance(r["generated"], str) for r in rows)
  with Image.open(workdir / "outputs" / "step_4.png") as grid:
    assert grid.format == "PNG" and grid.size[0] > 100


def test_sample_mode_captions_each_image_of_a_folder(trained, tmp_path):
  config, workdir, _ = trained
  images = [e["image"] for e in paired.held_out_examples(config.data, 2)]
  config = caption_config()
  config.sample.image = str(write_pngs(tmp_path / "imgs", images, ["b.png", "a.png"]))
  texts = loop.run_mode(config, str(workdir), "sample")
  assert [t.split("]")[0] for t in texts] == ["[a.png", "[b.png"]   # sorted by name


def refused(config, tmp_path, field):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    loop.run_mode(config, str(workdir), "train")
  assert error.value.field == field, str(error.value)
  assert not workdir.exists(), "nothing may be written before validation passes"


def test_an_image_of_the_wrong_size_or_channels_or_unreadable_is_refused(tmp_path):
  config = caption_config()
  write_pngs(tmp_path / "big", [np.zeros((48, 48, 3), np.uint8)], ["x.png"])
  write_pngs(tmp_path / "grey", [np.zeros((32, 32), np.uint8)], ["x.png"])
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG not really")
  for name in ("big", "grey", "broken"):
    config.sample.image = str(tmp_path / name)
    refused(config, tmp_path, "sample.image")


def test_a_source_longer_than_the_encoder_is_refused(tmp_path):
  config = seq2seq.get_config("tiny")
  config.sample.source = "x" * config.model.encoders[0].max_len   # + EOS: one too many
  refused(config, tmp_path, "sample.source")


@pytest.mark.parametrize("field,value", [
    ("model.encoders[0].image_size", 64),         # the data renders 32 x 32
    ("model.encoders[0].kind", "text"),           # shapes gives no source
    ("model.levels[0].cross_attention", False),   # nothing reads the memory
    ("model.fusion", "gated:3"),
])
def test_encoders_that_do_not_fit_the_data_are_refused(tmp_path, field, value):
  config = caption_config()
  node = config
  *path, last = field.replace("[0]", ".0").split(".")
  for part in path:
    node = node[int(part)] if part.isdigit() else node[part]
  node[last] = value
  if last == "kind":
    node.max_len = config.data.source_len
  refused(config, tmp_path, field)


def test_launch_exits_2_with_one_line_for_a_bad_image(tmp_path):
  write_pngs(tmp_path / "big", [np.zeros((48, 48, 3), np.uint8)], ["x.png"])
  proc = subprocess.run([sys.executable, "launch.py", "--config=configs/caption.py:tiny",
                         f"--workdir={tmp_path / 'run'}",
                         f"--config.sample.image={tmp_path / 'big'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "sample.image" in lines[0] and "x.png" in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", ["caption", "seq2seq"])
def test_an_encoder_decoder_trains_on_a_2x2x2_mesh_like_on_one_device(preset):
  config = (caption.get_config("tiny") if preset == "caption" else
            seq2seq.get_config("size=tiny,model=mgm3"))
  config.train.batch_size = 8
  data = pipeline.make_dataset(config.data, "train", batch_size=8, seed=0)
  batches = [b for _, b in zip(range(2), data)]
  config.mesh.update(data=1, fsdp=1, tensor=1)
  ref_losses, ref_state, _ = train_steps(config, jax.devices()[:1], batches)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  losses, state, _ = train_steps(config, jax.devices(), batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5),
               state.params, ref_state.params)
  encoder = state.params["encoder_0"]
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(encoder))
