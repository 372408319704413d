"""A tiny TFDS dataset prepared in tests without TensorFlow (tests/test_data.py,
tests/test_config_audit.py); tests/ is on sys.path as pytest's rootless test directory."""
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


class MgmTinyText(tfds.core.GeneratorBasedBuilder):
  """A real (not mocked) dataset, prepared in tests without TensorFlow."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "id": tfds.features.Scalar(dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "validation": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"text": f"document {i}: naïve café\n" * (i + 1), "id": i}


def prepare(data_dir: str) -> str:
  """Prepare it under `data_dir`; its TFDS name."""
  MgmTinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "mgm_tiny_text"


class MgmTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """A real (not mocked) paired dataset: images of one colour each, captions
  naming it, and a source text; prepared in tests without TensorFlow (tfds
  encodes a PIL image with PIL; a numpy image would need TensorFlow)."""
  VERSION = tfds.core.Version("1.0.0")
  COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "question": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      name = list(self.COLOURS)[i % 3]
      image = Image.new("RGB", (30, 20 + i), self.COLOURS[name])
      yield i, {"image": image, "question": f"which colour is {i}? ünï",
                "captions": {"text": [f"a {name} picture", f"{name} everywhere {i}"]}}
