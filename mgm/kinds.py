"""Registries of the model's kinds: one registered class per pooling, units,
span, upsampling and mixer type, holding everything about it (how it is parsed
from its config string, its teacher-forced and incremental forms, its widths
and FLOPs). Config strings are `name` or `name:arg` (`fixed:8`, `window:64`,
`conv:4`); `LevelSpec` parses each once into its kind object.

Adding a kind is one class in the kind's module, decorated with its
registry's `register` (README, "Extending mgm").
"""
from typing import ClassVar


class KindError(ValueError):
  """A config string that names no registered kind, or a bad argument to one.
  `LevelSpec` re-raises it as a ConfigError naming the field."""

  def __init__(self, field: str, problem: str):
    self.field = field
    super().__init__(problem)


class Kind:
  """Base of every kind class: a `name`, the config `field` it is read from,
  parsing of a kind that takes no argument, and its config string."""
  name: ClassVar[str]
  field: ClassVar[str]

  @classmethod
  def parse(cls, arg):
    """The kind from the text after its name's colon (None: no colon)."""
    if arg is not None:
      raise KindError(cls.field, f"{cls.name!r} takes no argument, got {cls.name}:{arg}")
    return cls()

  def __str__(self):
    return self.name


class Registry:
  """name -> kind class, for one kind (e.g. 'pooling'). A kind class has a
  `name` and a classmethod `parse(arg: str | None)` returning the instance
  (raising KindError for a bad argument); instances are frozen and hashable."""

  def __init__(self, what: str, field: str, usage: str = ""):
    self.what, self.field, self.usage = what, field, usage
    self._classes = {}

  def register(self, cls):
    if cls.name in self._classes:
      raise ValueError(f"{self.what} {cls.name!r} is registered twice")
    self._classes[cls.name] = cls
    return cls

  def names(self) -> tuple[str, ...]:
    return tuple(self._classes)

  def parse(self, text: str):
    """'name' or 'name:arg' -> the kind object; KindError naming the valid ones."""
    if not isinstance(text, str):
      raise KindError(self.field, f"must be a string, got {text!r}")
    name, colon, arg = text.partition(":")
    cls = self._classes.get(name)
    if cls is None:
      raise KindError(self.field, f"unknown {self.what} {text!r}; use "
                      f"{self.usage or ', '.join(self.names())}")
    return cls.parse(arg if colon else None)


def positive_arg(field: str, name: str, arg: str | None, what: str) -> int:
  """The positive integer `arg` of '<name>:<arg>'; KindError otherwise."""
  if arg is None or not arg.isdigit() or int(arg) <= 0:
    raise KindError(field, f"{name}:{arg or ''} needs a positive integer {what}, "
                    f"as in '{name}:8'")
  return int(arg)
