"""Errors users see: each names the config field (or path) and the fix."""


class ConfigError(ValueError):
  """A config value that cannot work. `field` is its dotted config path."""

  def __init__(self, field: str, problem: str):
    self.field = field
    super().__init__(f"config field `{field}`: {problem}")


class DataError(ConfigError):
  """Data the config points at that cannot be used (missing files, unknown dataset)."""


class WorkdirError(ValueError):
  """A workdir that belongs to another run, or holds no checkpoint to restore."""


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite values in a row, a non-finite state at a save)."""
