"""The run's workdir: resolved config, and the check that a workdir belongs to this run."""
import json

from mgm import adversarial as adv_lib
from mgm import files
from mgm.errors import WorkdirError
from mgm.files import set_aside, write_json
from mgm.model.spec import LevelSpec, ModelSpec, field_defaults

# Sections that fix the shapes of parameters, the train state and data: a run
# cannot continue in a workdir whose saved config differs in these.
SHAPE_SECTIONS = ("model", "data", "adversarial")
# ...except these, which change how a step is computed, not what it computes.
COMPUTE_ONLY_FIELDS = ("model.remat", "model.remat_policy", "model.attention_impl",
                       "model.loss_chunk")


def config_to_dict(config) -> dict:
  """ConfigDict (with lists of ConfigDicts) -> plain JSON-able dict."""
  return json.loads(config.to_json())


def _diff(old, new, prefix=""):
  """Dotted paths where two nested dicts differ."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    return out
  if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
    return [d for i, (a, b) in enumerate(zip(old, new)) for d in _diff(a, b, f"{prefix}[{i}]")]
  return [] if old == new else [prefix]


def with_model_defaults(saved: dict) -> dict:
  """A saved config with the model fields added since it was written set to their
  defaults (what that run used), so a new field never blocks its resume; a run
  from before data.packing read rows as one stream: packing 'none'."""
  model = saved.get("model", {})
  for level in model.get("levels", []):
    for name, value in field_defaults(LevelSpec).items():
      level.setdefault(name, value)
  for name, value in field_defaults(ModelSpec).items():
    model.setdefault(name, value)
  saved.setdefault("data", {}).setdefault("packing", "none")   # runs before data.packing
  saved.setdefault("adversarial", dict(adv_lib.DEFAULTS))      # runs before it: off
  return saved


def check_and_save_config(workdir: str, config, write: bool = True) -> dict:
  """Refuse a workdir holding another run's incompatible config; save the resolved one.

  A compatible change (say `train.steps`, to extend a run) keeps the previous
  file as config-<time>.json: nothing already written is lost.
  """
  new = config_to_dict(config)
  path = files.path(workdir) / "config.json"
  if path.exists():
    old = with_model_defaults(json.loads(path.read_text(encoding="utf-8")))
    changed = _diff(old, new)
    clashes = [p for p in changed if p.split(".")[0].split("[")[0] in SHAPE_SECTIONS
               and p not in COMPUTE_ONLY_FIELDS]
    if clashes:
      more = f"; and {len(clashes) - 6} more" if len(clashes) > 6 else ""
      raise WorkdirError(
          f"workdir {str(workdir)!r} holds another run, whose config differs in "
          f"{'; '.join(_describe(old, new, p) for p in clashes[:6])}{more}. Use another "
          "--workdir, or the same model and data config to resume it.")
    if changed and write:
      set_aside(path)
  if write:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, new)
  return new


def _describe(old: dict, new: dict, dotted: str) -> str:
  """One difference, short: `a.b` 3 there, 4 here (a list of another length by its length)."""
  before, after = _lookup(old, dotted), _lookup(new, dotted)
  if isinstance(before, list) and isinstance(after, list):
    return f"{dotted} ({len(before)} entries there, {len(after)} here)"
  return f"{dotted} ({_short(before)} there, {_short(after)} here)"


def _short(value, limit: int = 40) -> str:
  text = "absent" if value is None else json.dumps(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _lookup(tree, dotted):
  for part in dotted.replace("[", ".[").split("."):
    if part.startswith("["):
      idx = int(part[1:-1])
      tree = tree[idx] if isinstance(tree, list) and idx < len(tree) else None
    else:
      tree = tree.get(part) if isinstance(tree, dict) else None
  return tree
