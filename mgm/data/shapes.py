"""`shapes`: generated captioning data with exactly one correct caption per image.

A scene is 1-3 objects, each a (cell, shape, colour, size) on a 3x3 grid of
cells, at most one object per cell (so objects never overlap), drawn from
(seed, split, index) alone. `render` draws it as RGB uint8 [S, S, 3] on a plain
background with numpy masks (no anti-aliasing, so bytes are identical across
runs and machines); `caption` writes it with a small grammar in row-major cell
order, e.g. "a large red circle at the top left and a small blue square at the
centre."; `parse_caption` inverts `caption` (ValueError outside the grammar).
4 shapes x 6 colours x 2 sizes x 9 cells: 432 one-object scenes, 82,944 of two,
9,289,728 of three.

Splits are disjoint by content, not only by index: a scene belongs to the
validation split when the crc32 of its caption falls in the lowest
`val_fraction` of buckets, and each split draws scenes (retrying with the next
attempt number) until one of its own comes up. A held-out image is never a
training image.
"""
import dataclasses
import zlib

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (140, 60, 180), "orange": (240, 130, 20)}
SIZES = {"small": 0.26, "large": 0.44}   # half-extent of an object, in cell widths
CELLS = ("top left", "top", "top right", "left", "centre", "right",
         "bottom left", "bottom", "bottom right")   # row-major on the 3x3 grid
GRID = 3
MAX_OBJECTS = 3
MIN_IMAGE_SIZE = 24   # below this a small shape is too few pixels to tell apart
BACKGROUND = (235, 235, 235)
_SPLIT_STREAMS = {"train": 0, "validation": 1}
BUCKETS = 1000
MIN_VAL_FRACTION = 1 / BUCKETS   # and at most 1 - this: both splits hold scenes


@dataclasses.dataclass(frozen=True, order=True)
class Obj:
  cell: int      # index into CELLS
  shape: str     # one of SHAPES
  colour: str    # a key of COLOURS
  size: str      # a key of SIZES


Scene = tuple[Obj, ...]   # sorted by cell: the caption's canonical order


def random_scene(rng: np.random.Generator) -> Scene:
  """1 to MAX_OBJECTS objects in distinct cells, uniform choices, sorted by cell."""
  count = int(rng.integers(1, MAX_OBJECTS + 1))
  cells = sorted(rng.choice(len(CELLS), size=count, replace=False).tolist())
  colours, sizes = list(COLOURS), list(SIZES)
  return tuple(Obj(cell, SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))],
                   sizes[rng.integers(len(sizes))]) for cell in cells)


def in_validation(scene: Scene, val_fraction: float) -> bool:
  """Whether `scene` is a held-out scene (by the crc32 of its caption)."""
  return zlib.crc32(caption(scene).encode()) % BUCKETS < val_fraction * BUCKETS


def scene_at(seed: int, split: str, index: int, val_fraction: float) -> Scene:
  """Scene `index` of `split`: a pure function of its arguments; the first scene
  drawn from (seed, split, index, attempt) for attempt = 0, 1, ... that is in `split`."""
  held_out = split == "validation"
  for attempt in range(100_000):
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index, attempt])
    scene = random_scene(rng)
    if in_validation(scene, val_fraction) == held_out:
      return scene
  raise ValueError(f"no {split} scene in 100,000 draws; val_fraction={val_fraction} is extreme")


# --- captions ----------------------------------------------------------------

def _phrase(obj: Obj) -> str:
  return f"a {obj.size} {obj.colour} {obj.shape} at the {CELLS[obj.cell]}"


def caption(scene: Scene) -> str:
  """'a X at P.', 'a X at P and a Y at Q.', 'a X at P, a Y at Q and a Z at R.'"""
  phrases = [_phrase(obj) for obj in sorted(scene)]
  head = ", ".join(phrases[:-1])
  return (f"{head} and {phrases[-1]}" if head else phrases[-1]) + "."


def parse_caption(text: str) -> Scene:
  """The scene a caption describes; ValueError if `caption` could not have written it."""
  if not text.endswith("."):
    raise ValueError(f"a caption ends with '.': {text!r}")
  head, _, last = text[:-1].rpartition(" and ")
  parts = (head.split(", ") if head else []) + [last]
  objects = []
  for part in parts:
    words = part.split(" ")
    if len(words) < 6 or words[0] != "a" or words[4:6] != ["at", "the"]:
      raise ValueError(f"not 'a SIZE COLOUR SHAPE at the CELL': {part!r}")
    size, colour, shape, cell = words[1], words[2], words[3], " ".join(words[6:])
    if size not in SIZES or colour not in COLOURS or shape not in SHAPES or cell not in CELLS:
      raise ValueError(f"unknown size, colour, shape or cell in {part!r}")
    objects.append(Obj(CELLS.index(cell), shape, colour, size))
  scene = tuple(objects)
  if caption(scene) != text:
    raise ValueError(f"not in canonical form (cells in row-major order, once each): {text!r}")
  return scene


# --- rendering ---------------------------------------------------------------

def _mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Pixels of `shape` at offsets (dx, dy) from its centre, in units of its
  half-extent (y grows downwards)."""
  if shape == "circle":
    return dx ** 2 + dy ** 2 <= 1.0
  if shape == "square":
    return np.maximum(abs(dx), abs(dy)) <= 0.8
  if shape == "triangle":   # apex up, base down
    return (dy <= 0.85) & (abs(dx) <= (dy + 1.0) * 0.5)
  if shape == "cross":
    return (((abs(dx) <= 0.3) & (abs(dy) <= 1.0)) | ((abs(dy) <= 0.3) & (abs(dx) <= 1.0)))
  raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def render(scene: Scene, image_size: int) -> np.ndarray:
  """The scene as RGB uint8 [image_size, image_size, 3]."""
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f"image_size {image_size} < {MIN_IMAGE_SIZE}")
  image = np.empty((image_size, image_size, 3), np.uint8)
  image[:] = BACKGROUND
  centres = np.arange(image_size) + 0.5   # pixel centres
  cell = image_size / GRID
  for obj in scene:
    row, col = divmod(obj.cell, GRID)
    extent = SIZES[obj.size] * cell
    dx = (centres[None, :] - (col + 0.5) * cell) / extent
    dy = (centres[:, None] - (row + 0.5) * cell) / extent
    image[_mask(obj.shape, dx, dy)] = COLOURS[obj.colour]
  return image
