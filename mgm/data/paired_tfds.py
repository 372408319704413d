"""Paired examples from a TFDS dataset, read with tfds.data_source (no TensorFlow).

data.tfds_target_field names the target text (a text feature, or a sequence of
them such as coco_captions' "captions/text": the first is the target, all are
the references); data.tfds_source_field a source text; data.tfds_image_field an
image, centre-cropped and resized to data.image_size. A nested feature is named
by its path, "captions/text"; a key that itself holds "/" ("image/id") is
matched first. Text comes back as str under tfds's mock data and as bytes from
a prepared dataset: both are decoded (invalid UTF-8 as U+FFFD).

Without TensorFlow, tfds does not register the builders whose modules use it
lazily, so the known paired datasets' modules are imported here by name
(BUILDER_MODULES), and coco's feature spec reads `tf.int64`, its only TensorFlow
use when reading: `_coco_without_tensorflow` gives it numpy's int64 instead.
"""
import importlib
import importlib.util
import types

import numpy as np

from mgm.data import paired, sources
from mgm.errors import DataError

# TFDS dataset name -> its builder module under tensorflow_datasets.
BUILDER_MODULES = {
    "coco_captions": "object_detection.coco_captions",
    "cnn_dailymail": "summarization.cnn_dailymail",
    **{f"wmt{y}_translate": f"translate.wmt{y}" for y in range(13, 20)},
    "wmt_t2t_translate": "translate.wmt_t2t",
}


def _import_builder(name: str) -> None:
  module = BUILDER_MODULES.get(name.split("/")[0].split(":")[0])
  if module is None:
    return
  importlib.import_module(f"tensorflow_datasets.{module}")
  if module.startswith("object_detection.") and importlib.util.find_spec("tensorflow") is None:
    _coco_without_tensorflow()


def _coco_without_tensorflow() -> None:
  from tensorflow_datasets.object_detection import coco
  coco.tf = types.SimpleNamespace(int64=np.int64)


def feature_paths(features, prefix: str = "") -> list[str]:
  """Every feature's path: top-level keys and, inside dicts and sequences of
  dicts, "outer/inner"."""
  import tensorflow_datasets as tfds
  paths = []
  for key, feature in features.items():
    paths.append(prefix + key)
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if isinstance(inner, tfds.features.FeaturesDict):
      paths += feature_paths(inner, f"{prefix}{key}/")
  return paths


def lookup(example: dict, path: str):
  """The value at `path` in a decoded example (see the module docstring)."""
  node, rest = example, path
  while rest not in node:
    head, _, rest = rest.partition("/")
    node = node[head]
  return node[rest]


def texts(value) -> list[str]:
  """A text value or a sequence of them (a numpy array under mock data, a list
  from a prepared dataset), as a list of str."""
  if isinstance(value, np.ndarray):
    value = value.reshape(-1).tolist()
  values = list(value) if isinstance(value, (list, tuple)) else [value]
  return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
          for v in values]


def examples(data_cfg, split: str, inputs: tuple[str, ...]) -> paired.Examples:
  """The examples of `split`; DataError naming the field for a feature the
  dataset does not have (listing the ones it has)."""
  if not data_cfg.tfds_target_field:
    raise DataError("data.tfds_target_field", "is empty but a data.tfds_*_field is set; "
                    "name the target text feature, e.g. captions/text or highlights")
  _import_builder(data_cfg.tfds_name)
  records = sources.open_tfds(data_cfg, split)
  known = feature_paths(records.dataset_info.features)
  fields = {"target": data_cfg.tfds_target_field,
            **{i: data_cfg[f"tfds_{i}_field"] for i in inputs}}
  for key, path in fields.items():
    if path not in known:
      raise DataError(f"data.tfds_{key}_field", f"{data_cfg.tfds_name} has no feature "
                      f"{path!r}; its features are {known}")
  size, channels = data_cfg.image_size, data_cfg.image_channels

  def make(i):
    record = records[i]
    references = texts(lookup(record, fields["target"])) or [""]
    example = {"target": references[0], "references": references}
    if "source" in inputs:
      example["source"] = "\n".join(texts(lookup(record, fields["source"])))
    if "image" in inputs:
      example["image"] = paired.fit_image(lookup(record, fields["image"]), size, channels)
    return example
  return paired.Examples(len(records), make, f"tfds {data_cfg.tfds_name} {split}")
