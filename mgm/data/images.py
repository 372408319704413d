"""Inputs that condition generation: images (sample.image) and source texts
(sample.source, sample.source_file), read and checked before anything is built.

Each problem is one `ConfigError` naming the field, the file and the fix. Images
are taken as they are: one of the wrong size or channel count is refused, never
resized or converted (a grayscale image given to an RGB model is a mistake to
fix, not to guess at).
"""
import json
import os

import numpy as np

from mgm.errors import ConfigError
from mgm.prompts import read_lines

EXTENSIONS = (".png", ".jpg", ".jpeg")   # a folder's images; other files are ignored
FORMATS = ("PNG", "JPEG")                # what PIL must find inside
MAX_IMAGES = 1024                        # one sampling run's images at most
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}   # PIL mode -> channels
KINDS = {1: "grayscale", 2: "grayscale + alpha", 3: "RGB", 4: "RGBA"}


def load_images(path: str, size: int, channels: int, field: str = "sample.image",
                limit: int = MAX_IMAGES) -> tuple[np.ndarray, list[str]]:
  """The images at `path`: a PNG/JPEG file, or a folder's PNG/JPEG files (by
  extension, sorted by name). Returns (pixels uint8 [N, size, size, channels],
  file names [N]).

  Raises ConfigError(field, ...) for a missing path, an empty folder, more than
  `limit` images, a file that is not a readable PNG/JPEG, and an image that is
  not size x size or does not have `channels` channels.
  """
  files = _image_files(path, field, limit)
  pixels = np.stack([_read(f, size, channels, field) for f in files])
  return pixels, [os.path.basename(f) for f in files]


def _image_files(path: str, field: str, limit: int) -> list[str]:
  """The file `path`, or the image files of the folder `path`, sorted by name."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise ConfigError(field, f"{path!r} does not exist; give a PNG/JPEG file or a folder "
                      "of them")
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(EXTENSIONS)
                 and os.path.isfile(os.path.join(path, n)))
  if not names:
    raise ConfigError(field, f"the folder {path!r} holds no PNG/JPEG file "
                      f"({', '.join(EXTENSIONS)}); put the images there or name one file")
  if len(names) > limit:
    raise ConfigError(field, f"the folder {path!r} holds {len(names)} images, more than "
                      f"the limit of {limit}; split it into folders of at most {limit}")
  return [os.path.join(path, n) for n in names]


def _read(file: str, size: int, channels: int, field: str) -> np.ndarray:
  """One image as uint8 [size, size, channels], decoded in full (a truncated file
  fails here, not later)."""
  from PIL import Image                       # deferred: only conditioned sampling reads images
  try:
    with Image.open(file) as image:
      image.load()
      kind = image.format
      if kind in FORMATS and image.mode in ("P", "PA", "1"):
        image = image.convert(_decoded_mode(image))   # a palette's colours, not a conversion
      mode, width, height = image.mode, image.width, image.height
      pixels = np.asarray(image) if kind in FORMATS and mode in CHANNELS else None
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise ConfigError(field, f"cannot read the image {file!r} ({e}); give a PNG or JPEG "
                      "file") from None
  if kind not in FORMATS:
    raise ConfigError(field, f"{file!r} is a {kind} image; save it as PNG or JPEG")
  if mode not in CHANNELS:
    raise ConfigError(field, f"{file!r} has pixels of PIL mode {mode}; save it as 8-bit "
                      f"{_kind(channels)}")
  if (width, height) != (size, size):
    raise ConfigError(field, f"{file!r} is {width}x{height} pixels (width x height), the model "
                      f"takes {size}x{size}; resize it to {size}x{size}")
  if CHANNELS[mode] != channels:
    raise ConfigError(field, f"{file!r} has {CHANNELS[mode]} channel(s) "
                      f"({_kind(CHANNELS[mode])}), the model takes {channels} "
                      f"({_kind(channels)}); convert it to {_kind(channels)}")
  return pixels.reshape(size, size, channels)


def _kind(channels: int) -> str:
  return KINDS.get(channels, f"{channels}-channel")


def _decoded_mode(image) -> str:
  """The mode a palette or 1-bit image decodes to: its colours, and alpha if it has any."""
  if image.mode == "1":
    return "L"
  base = "L" if image.palette is not None and image.palette.mode == "L" else "RGB"
  has_alpha = image.mode == "PA" or "transparency" in image.info
  return {"L": "LA", "RGB": "RGBA"}[base] if has_alpha else base


def load_sources(text: str, file: str, max_len: int) -> list[str]:
  """The source texts to condition on: [text] (sample.source), the non-blank lines
  of `file` (sample.source_file), or, for a file ending in .jsonl, each line's
  "source"; [] when neither is set. Each must fit the text encoder: its UTF-8
  bytes + 1 (EOS) <= max_len tokens.

  Raises ConfigError naming sample.source or sample.source_file: both set, an
  unreadable, non-UTF-8 or empty file, a JSONL line without a "source" string, a
  source too long.
  """
  if text and file:
    raise ConfigError("sample.source_file", "set only one of sample.source (one text) "
                      "and sample.source_file (a file of them); empty the other")
  if text:
    sources = [(text, "sample.source", "sample.source")]
  elif file:
    sources = _read_sources(file)
  else:
    return []
  for source, field, origin in sources:
    tokens = len(source.encode("utf-8")) + 1
    if tokens > max_len:
      raise ConfigError(field, f"{origin} is {tokens - 1} bytes + EOS = {tokens} tokens, "
                        f"more than the text encoder's max length {max_len}; shorten it")
  return [source for source, _, _ in sources]


def _read_sources(path: str) -> list[tuple[str, str, str]]:
  """(text, field, origin) for each source of the file at `path`."""
  field = "sample.source_file"
  lines = read_lines(path, field, "a UTF-8 file with one source per line, or a .jsonl "
                     "with a \"source\" per line")
  jsonl = path.lower().endswith(".jsonl")
  sources = [(_json_source(line, i, path) if jsonl else line, field, f"line {i} of {path!r}")
             for i, line in enumerate(lines, start=1) if line.strip()]
  if not sources:
    raise ConfigError(field, f"{path!r} holds no source; write one per line")
  return sources


def _json_source(line: str, number: int, path: str) -> str:
  try:
    source = json.loads(line).get("source")
  except (ValueError, AttributeError):
    source = None
  if not isinstance(source, str):
    raise ConfigError("sample.source_file", f"line {number} of {path!r} is not a JSON "
                      "object with a \"source\" string; write {\"source\": \"...\"} per line")
  return source
