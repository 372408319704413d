"""Every config field audited: walking the config, each field with a failure mode is
given bad values, and each is refused by `loop.run_mode` naming that field before
anything is written (no workdir, so no config.json and no checkpoint), including
fields only read at the end of a run (sample.*, eval.*). In-process: validation
refuses before any compile, so each case costs milliseconds."""
import math

import pytest

import tfds_tiny
from configs.lm import get_config
from mgm import loop, sharding
from mgm.errors import ConfigError
from mgm.validate import leaves, validate
from test_validate import all_utf8_bytes, override

PRESET = "tiny"   # one flat level, seq_len 64, 8 fake devices (tests/conftest.py)


NOT_A_CHECKPOINT = object()   # replaced by an existing directory with no checkpoint step

# field -> bad values, each refused naming the field. Values of another type are
# what a config file (not the typed command line) could hold.
BAD = {
    "seed": [0.5],
    "checkpoint.every_minutes": [-1.0],
    "checkpoint.every_steps": [0],
    "checkpoint.init_from": [3, "/nonexistent/run", NOT_A_CHECKPOINT],
    "checkpoint.keep": [0],
    "checkpoint.keep_best": ["yes"],
    "data.corpus_seed": [-1],
    "distill.alpha": [-0.1, 1.5, "0.5"],
    "distill.temperature": [0.0, -1.0],
    "distill.teachers": [3, "/nonexistent/run", NOT_A_CHECKPOINT],
    "data.blind_inputs": ["yes", True],        # True: the model has no encoders
    "data.files": ["corpus/*.txt"],            # set while data.source is synthetic
    "data.image_channels": [2, 0],
    "data.image_size": [0],
    "data.source_len": [-1],
    "data.tfds_image_field": ["image"],        # set while data.source is synthetic
    "data.tfds_source_field": ["article"],     # set while data.source is synthetic
    "data.tfds_target_field": ["highlights"],  # set while data.source is synthetic
    "data.val_examples": [0],
    "data.noise": ["mask", 3],
    "data.noise_density": [1.0, -0.1, "0.15"],
    "data.noise_mean_span": [0.5, "20"],
    "data.noise_delete": [1.0],
    "data.noise_replace": [-0.5, 0.96],        # 0.96 + data.noise_delete 0.05 >= 1
    "data.noise_insert": [1.0, True],
    "data.noise_seed": [-1, 0.5],
    "data.seq_len": [0],
    "data.packing": ["segment_ids", ""],
    "data.source": ["parquet"],
    "data.synthetic": [{"bogus": 1}, {"num_topics": 0}],
    "data.text_doc_bytes": [0],
    "data.tfds_data_dir": ["~/tensorflow_datasets"],   # set while data.source is synthetic
    "data.tfds_name": ["lm1b"],                        # set while data.source is synthetic
    "data.val_fraction": [0.0, 1.0, "0.1"],
    "eval.continuations": [-1],
    "eval.examples": [-1, 4],                  # 4: the model has no encoders
    "eval.beam_size": [0],
    "eval.new_tokens": [0, 40],                # 32 + 40 > data.seq_len
    "eval.prompt_tokens": [0],
    "mesh.data": [0],
    "mesh.fsdp": [0],
    "mesh.rules": [(("batch", "rows"),)],
    "mesh.tensor": [-2],
    "model.attention_impl": ["flash"],
    "model.dtype": ["float8"],
    "model.fusion": ["concat"],                # no encoders to fuse
    "model.num_tasks": [-1, 2],                # 2: data.tasks is empty
    "model.memory_width": [-1],
    "model.levels[0].cross_attention": [True, "yes"],   # True: no encoders
    "model.levels[0].aux_loss": ["bag"],       # the token level has the token loss
    "model.levels[0].aux_weight": [-1.0],
    "model.levels[0].depth": [-1],
    "model.levels[0].heads": [3],
    "model.levels[0].max_len": [-1],
    "model.levels[0].max_units": [-1],
    "model.levels[0].mixer": ["transformer", "conv:0", "lstm:2"],
    "model.levels[0].pool": ["median"],
    "model.levels[0].pre_layers": [-1],
    "model.levels[0].span": ["parent", "window:0"],
    "model.levels[0].units": ["word"],
    "model.levels[0].upsample": ["nearest"],
    "model.levels[0].width": [0],
    "model.loss_chunk": [-1, 0.5],
    "model.mlp_ratio": [0],
    "model.qk_norm": ["no"],
    "model.remat": [1],
    "model.scan_layers": ["yes"],
    "adversarial.weight": [-0.1],
    "adversarial.discriminator": ["gru", 3],
    "adversarial.width": [0],
    "adversarial.depth": [0],
    "adversarial.heads": [0, 3],               # 3 does not divide the width 64
    "adversarial.lr": [0.0],
    "adversarial.gumbel_temperature": [0.0],
    "model.remat_policy": ["some"],
    "model.rope_base": [0.0],
    "model.vocab_size": [256],
    "profile.steps": ["3", "2,x", "0,2", "3,2", "2,21", "1,2,3", 23],   # tiny: 20 steps
    "sample.banned": [all_utf8_bytes(), "\udcff"],
    "sample.beam_size": [0],
    "sample.forced_prefix": ["x" * 33, "\udcff"],
    "sample.image": [3, "shapes/"],            # the tiny model has no image encoder
    "sample.length_penalty": ["1"],
    "sample.max_new_tokens": [0, 64],
    "sample.min_new_tokens": [-1, 33],
    "sample.num_samples": [0],
    "sample.prompt": ["x" * 40, "\udcff"],
    "sample.prompt_file": ["/nonexistent/prompts.txt"],
    "sample.repetition_penalty": [0.0, -1.2],
    "sample.no_repeat_ngram_size": [-1, 2.5],
    "sample.seed": [0.5],
    "sample.source": [3, "a source"],          # nor a text encoder
    "sample.source_file": [3, "/nonexistent/sources.txt"],
    "sample.stop": [(3,), "\n\n"],
    "sample.stop_at_eos": ["yes"],
    "sample.strategy": ["nucleus"],
    "sample.temperature": [-1.0],
    "sample.top_k": [-1, 260],
    "sample.top_p": [0.0, 1.5],
    "train.b1": [1.0],
    "train.b2": [-0.1],
    "train.batch_size": [0],
    "train.eval_batches": [0],
    "train.eval_every": [0],
    "train.grad_accum": [0, 3],
    "train.grad_clip": [0.0],
    "train.log_every": [0],
    "train.lr": [0.0],
    "train.label_smoothing": [1.0, -0.1],
    "train.max_nonfinite_in_a_row": [-1],
    "train.min_lr_ratio": [-0.1, 1.5],
    "train.steps": [0],
    "train.warmup_steps": [-1, 21],
    "train.weight_decay": [-0.1],
}
# Fields whose failure modes need a TFDS dataset: test_tfds_fields_are_refused_by_validation.
TFDS_FIELDS = {"data.tfds_text_field": "body", "data.tfds_train_split": "dev",
               "data.tfds_eval_split": "dev"}
# Read by launch.py before anything else: test_distributed_fields_are_refused_first.
DISTRIBUTED_FIELDS = {"distributed.num_processes": 0, "distributed.process_id": 5}
SET_BEFORE = {"distributed.process_id": {"distributed.num_processes": 2}}
NO_FAILURE_MODE = {"distributed.auto": "True calls jax.distributed.initialize(), whose "
                                       "errors are JAX's",
                   "distributed.coordinator_address": "any address; connecting is JAX's"}


def test_every_field_is_audited():
  fields = {field for field, _ in leaves(get_config(PRESET))}
  audited = set(BAD) | set(TFDS_FIELDS) | set(DISTRIBUTED_FIELDS) | set(NO_FAILURE_MODE)
  assert fields == audited, (f"not audited: {sorted(fields - audited)}; "
                             f"no longer fields: {sorted(audited - fields)}")


@pytest.fixture(autouse=True)
def nothing_compiles(monkeypatch):
  """A refusal comes before the model is built: building it fails the test."""
  def create(*args, **kwargs):
    raise AssertionError("the run got as far as building the model")
  monkeypatch.setattr(loop.Setup, "create", create)


def _refused(tmp_path, field, value):
  config = get_config(PRESET)
  override(config, field, value)
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError) as error:
    loop.run_mode(config, str(workdir), "train")
  assert error.value.field == field, str(error.value)
  assert f"config field `{field}`: " in str(error.value) and "\n" not in str(error.value)
  assert not workdir.exists(), "a refused run writes nothing"


CASES = [(field, value) for field, values in BAD.items() for value in values]


@pytest.mark.parametrize("field,value", CASES,
                         ids=[f"{f}={v!r:.20}" for f, v in CASES])
def test_a_bad_value_is_refused_naming_its_field_before_anything_is_written(
    tmp_path, field, value):
  if value is NOT_A_CHECKPOINT:
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    value = str(tmp_path / "empty_run")
  _refused(tmp_path, field, value)


FLOATS = [field for field, value in leaves(get_config(PRESET)) if isinstance(value, float)]


@pytest.mark.parametrize("field", FLOATS)
def test_nan_and_infinity_are_refused_in_every_float_field(tmp_path, field):
  assert len(FLOATS) >= 12   # the walk found the float fields
  for value in (math.nan, math.inf, -math.inf):
    _refused(tmp_path, field, value)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  return str(directory), tfds_tiny.prepare(str(directory))


def test_tfds_fields_are_refused_by_validation(tmp_path, tfds_dir):
  data_dir, name = tfds_dir
  config = get_config(PRESET)
  config.data.update(source="tfds", tfds_name=name, tfds_data_dir=data_dir)
  validate(config)   # the dataset itself is fine
  for field, value in TFDS_FIELDS.items():
    config = get_config(PRESET)
    config.data.update(source="tfds", tfds_name=name, tfds_data_dir=data_dir)
    override(config, field, value)
    with pytest.raises(ConfigError) as error:
      loop.run_mode(config, str(tmp_path / "w"), "train")
    assert error.value.field == field, str(error.value)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("field,value", DISTRIBUTED_FIELDS.items())
def test_distributed_fields_are_refused_first(field, value):
  """launch.py calls initialize_distributed before loop.run_mode: it refuses before
  connecting (a coordinator that does not exist would hang, not raise)."""
  config = get_config(PRESET)
  config.distributed.coordinator_address = "localhost:1"
  for other, good in SET_BEFORE.get(field, {}).items():
    override(config, other, good)
  override(config, field, value)
  with pytest.raises(ConfigError) as error:
    sharding.initialize_distributed(config.distributed)
  assert error.value.field == field
