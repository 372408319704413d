"""What a run writes before its first step (nothing it could leave behind half-made),
where samples start by default, and generation that outgrows a level's max_units."""
import logging

import numpy as np
import pytest

from configs.lm import get_config
from mgm import loop, prompts, samples
from mgm.data import sources
from mgm.data.tokenizer import PAD, encode
from mgm.errors import DataError, WorkdirError
from mgm.model import spec as spec_lib
from mgm.workdir import check_and_save_config


def test_a_run_failing_before_its_first_step_leaves_no_config(tmp_path, monkeypatch):
  """Say the first step runs out of memory: the corrected command must not then be
  refused as 'a different run' by the config.json of a run that never trained."""
  create = loop.Setup.create

  def create_failing(*args, **kwargs):
    setup = create(*args, **kwargs)
    def out_of_memory(state, batch):
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling the step")
    setup.train_step = out_of_memory
    return setup

  monkeypatch.setattr(loop.Setup, "create", create_failing)
  config = get_config("tiny")
  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
    loop.run_mode(config, str(tmp_path / "w"), "train")
  assert not (tmp_path / "w" / "config.json").exists()
  assert not list((tmp_path / "w").glob("checkpoints/*"))


def test_a_mistyped_glob_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
  monkeypatch.setattr(loop.Setup, "create", None)   # calling it would raise a TypeError
  config = get_config("tiny")
  config.sample.prompt = "= "   # not the default prompt, which reads the data too
  config.data.update(source="text", files=str(tmp_path / "corpus" / "*.txtt"))
  with pytest.raises(DataError, match="`data.files`"):
    loop.run_mode(config, str(tmp_path / "w"), "train")
  assert not (tmp_path / "w").exists()


def test_the_default_prompt_comes_from_the_data_source(tmp_path):
  for i in range(20):
    (tmp_path / f"f{i:02d}.txt").write_text(f"\n  Chapter {i}: the {'long ' * i}road\nbody\n")
  config = get_config("tiny")
  assert [p.text for p in prompts.read_prompts(config)] == ["= "]   # synthetic titles
  config.data.update(source="text", files=str(tmp_path / "*.txt"), text_doc_bytes=1000)
  held_out = sources.make_source(config.data, "validation")[0].decode()
  first_line = held_out.split("\n")[1].strip()
  assert first_line.startswith("Chapter")
  room = config.data.seq_len - config.sample.max_new_tokens   # 32 bytes
  [prompt] = prompts.read_prompts(config)
  assert prompt.text == first_line[:room] and prompt.field == "sample.prompt"
  config.sample.prompt = "= Tara ="   # an explicit prompt wins
  assert [p.text for p in prompts.read_prompts(config)] == ["= Tara ="]


def test_generation_outgrowing_max_units_is_warned(caplog):
  config = get_config("model=mgm3,size=tiny")   # sentences: max_units 8
  spec = spec_lib.from_config(config.model)
  fits, overflows = "Hi. " * 7 + "Ok", "Hi. " * 12
  rows = np.full((2, 64), PAD, np.int32)
  for i, text in enumerate((fits, overflows)):
    rows[i, :len(text)] = encode(text)
  with caplog.at_level(logging.WARNING):
    samples._warn_unit_overflow(spec, rows, config.data.seq_len)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith("sample 1: prompt + generated text "
                                                       "hold 12 units at model.levels[0]")
  assert "raise model.levels[0].max_units" in warnings[0]


def test_a_workdir_mismatch_names_only_the_fields_that_differ(tmp_path):
  check_and_save_config(str(tmp_path), get_config("model=megabyte,size=tiny"))
  with pytest.raises(WorkdirError) as error:
    check_and_save_config(str(tmp_path), get_config("model=mgm3,size=tiny"), write=False)
  assert str(error.value) == (
      f"workdir '{tmp_path}' holds another run, whose config differs in model.levels (2 "
      "entries there, 3 here). Use another --workdir, or the same model and data config to "
      "resume it.")
  config = get_config("model=megabyte,size=tiny")
  config.model.levels[0].update(units="fixed:4", pool="mean")
  config.data.seq_len = 128
  with pytest.raises(WorkdirError, match=r'differs in data.seq_len \(64 there, 128 here\); '
                     r'model.levels\[0\].pool \("concat" there, "mean" here\); '
                     r'model.levels\[0\].units \("fixed:8" there, "fixed:4" here\)\. Use'):
    check_and_save_config(str(tmp_path), config, write=False)
