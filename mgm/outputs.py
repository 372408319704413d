"""What a conditioned model generated for held-out examples, kept in the workdir:
outputs/step_<step>.jsonl (one line per example) and, for captioning, a PNG grid
of the images with generated and reference captions.

Both are written atomically (a temporary file, then a rename); a different file
already at the path is set aside under a free name (mgm/files.py), never
overwritten, so nothing written is lost.
"""
import io
import json
import math
import os
import textwrap

import numpy as np

from mgm import files
from mgm.files import _plain, set_aside
from mgm.metrics import exact_match

CELL_INCHES = (2.5, 3.2)   # one image and its captions (width, height)
IMAGE_INCHES = 2.2         # the image's side; the captions go above it
MARGIN_INCHES = 0.15       # below the image
DPI = 100                  # so a cell is 250 x 320 pixels
WRAP = 34                  # characters per caption line
WRONG, RIGHT = "tab:red", "tab:green"


def write_outputs(workdir: str, step: int, rows: list[dict]) -> str:
  """outputs/step_<step>.jsonl under `workdir`, one JSON object per row, in order
  (e.g. {"id", "source" or "image", "references", "generated"}; numpy scalars
  become numbers). Returns its path."""
  directory = files.path(workdir) / "outputs"
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"step_{int(step)}.jsonl"
  _put("".join(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in rows)
       .encode("utf-8"), path)
  return os.fspath(path)


def caption_grid(images: np.ndarray, generated: list[str], references: list[list[str]],
                 path: str, columns: int = 4) -> str:
  """A PNG at `path`: images (uint8 [N, H, W, C], C = 1, 3 or 4) in rows of
  `columns`, each titled with its generated caption and its first reference; a
  caption equal to no reference (metrics.exact_match) is red and marked WRONG,
  a right one green. The PNG is min(N, columns) x ceil(N / columns) cells of
  CELL_INCHES * DPI pixels (250 x 320). Returns `path`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg   # deferred: plots only
  from matplotlib.figure import Figure
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, 1|3|4], got {images.dtype} "
                     f"{images.shape}")
  if not len(images) == len(generated) == len(references) or not len(images):
    raise ValueError(f"{len(images)} images, {len(generated)} captions and "
                     f"{len(references)} reference lists: need as many, at least one")
  cols = min(columns, len(images))
  rows = math.ceil(len(images) / cols)
  figure = Figure(figsize=(cols * CELL_INCHES[0], rows * CELL_INCHES[1]), dpi=DPI)
  FigureCanvasAgg(figure)
  for i, (image, hyp, refs) in enumerate(zip(images, generated, references)):
    row, col = divmod(i, cols)
    _cell(figure.add_axes(_image_box(row, col, rows, cols)), image, hyp, refs)
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
  _put(png.getvalue(), files.path(path))
  return path


def _image_box(row: int, col: int, rows: int, cols: int) -> list[float]:
  """[left, bottom, width, height] of a cell's image, in fractions of the figure."""
  width, height = cols * CELL_INCHES[0], rows * CELL_INCHES[1]
  left = col * CELL_INCHES[0] + (CELL_INCHES[0] - IMAGE_INCHES) / 2
  bottom = (rows - 1 - row) * CELL_INCHES[1] + MARGIN_INCHES
  return [left / width, bottom / height, IMAGE_INCHES / width, IMAGE_INCHES / height]


def _cell(axes, image: np.ndarray, generated: str, references: list[str]):
  """One image [H, W, C], titled with the generated caption and the first reference."""
  right = exact_match([generated], [references]) == 100.0
  shown = image[..., 0] if image.shape[-1] == 1 else image
  axes.imshow(shown, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255,
              interpolation="nearest")
  axes.set_xticks([])
  axes.set_yticks([])
  for side in axes.spines.values():
    side.set_color(RIGHT if right else WRONG)
    side.set_linewidth(3)
  title = (("" if right else "WRONG: ") + _wrap(generated)
           + "\nref: " + _wrap(references[0] if references else ""))
  axes.set_title(title, fontsize=7, color=RIGHT if right else WRONG, loc="left")


def _wrap(text: str) -> str:
  """At most two lines of WRAP characters, '...' where cut."""
  lines = textwrap.wrap(text, WRAP) or [""]
  return "\n".join(lines[:2]) + ("..." if len(lines) > 2 else "")


def _put(data: bytes, path):
  """Write `data` to `path` (an epath.Path) through a .tmp file renamed over it;
  a different file already there is set aside first."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(data)
  if path.exists() and path.read_bytes() != data:
    set_aside(path)
  tmp.replace(path)
