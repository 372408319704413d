"""The prompts samples start from (`sample.prompt`, `sample.prompt_file`, or the data
source's default), each with where it came from, so an error can name it.

Validation reads them before anything compiles (mgm/validate.py); sampling reads
them again at the end of a run (mgm/loop.py). Errors are `ConfigError`s naming
the field (and the file's line).
"""
import dataclasses
import os

from mgm.data import paired, sources
from mgm.errors import ConfigError

DEFAULT_PROMPT_BYTES = 64   # the most a default prompt takes from a held-out document


@dataclasses.dataclass(frozen=True)
class Prompt:
  text: str
  field: str    # the config field to fix: sample.prompt or sample.prompt_file
  origin: str   # for messages: "sample.prompt", "line 3 of 'p.txt'", ...


def read_prompts(config) -> list[Prompt]:
  """config.sample.prompt_file's non-blank lines, else sample.prompt, else (an empty
  sample.prompt) the data source's default prompt (sources.default_prompt) of at
  most DEFAULT_PROMPT_BYTES and at most data.seq_len - sample.max_new_tokens bytes."""
  cfg = config.sample
  if cfg.prompt_file:
    return _read_file(cfg.prompt_file)
  if cfg.prompt:
    return [Prompt(cfg.prompt, "sample.prompt", "sample.prompt")]
  if paired.is_paired(config.data):   # targets start afresh after their image or source
    return [Prompt("", "sample.prompt", "the empty prompt of a paired data.source")]
  room = min(DEFAULT_PROMPT_BYTES, max(config.data.seq_len - cfg.max_new_tokens, 0))
  text = sources.default_prompt(config.data, room)
  return [Prompt(text, "sample.prompt", f"the default prompt {text!r} of data.source="
                 f"{config.data.source!r} (sample.prompt is empty)")]


def read_lines(path: str, field: str, fix: str) -> list[str]:
  """The lines of the UTF-8 file at `path` (~ expanded); ConfigError naming
  `field` for a file that is not UTF-8 or cannot be read (`fix`: what to give)."""
  try:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      return f.read().split("\n")
  except UnicodeDecodeError as e:
    raise ConfigError(field, f"{path!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                      "save it as UTF-8") from None
  except OSError as e:
    raise ConfigError(field, f"cannot read {path!r} ({e.strerror}); give {fix}") from None


def _read_file(path: str) -> list[Prompt]:
  name = "sample.prompt_file"
  lines = read_lines(path, name, "a UTF-8 file with one prompt per line")
  prompts = [Prompt(line, name, f"line {i} of {path!r}")
             for i, line in enumerate(lines, start=1) if line.strip()]
  if not prompts:
    raise ConfigError(name, f"{path!r} holds no prompt; write one prompt per line")
  return prompts
