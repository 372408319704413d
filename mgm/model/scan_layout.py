"""Parameter trees of the decoder stacks, unrolled or scanned (model.scan_layers).

Unrolled, a stack's blocks are `level_i/block_0 .. block_{d-1}` (and `pre_i/...`);
scanned (`nn.scan`, mgm/nn/transformer.py), they are one tree
`level_i/blocks/block` whose every leaf has a leading [d] axis. The two
compute the same function; these convert a checkpoint's parameters (or an
optimizer state's moments, any tree of the same structure) from one layout to
the other, so `checkpoint.init_from` reads either into either. Encoder stacks
are never scanned and are left as they are.
"""
import re

import jax
import jax.numpy as jnp

STACK = re.compile(r"(level|pre)_\d+$")     # the top-level names of decoder stacks
BLOCK = re.compile(r"block_(\d+)$")
SCANNED, UNROLLED = "scanned", "unrolled"


def _stacks(params):
  return [k for k in params if STACK.match(k)]


def layout(params) -> str | None:
  """'scanned', 'unrolled', or None (no decoder stack, or stacks of depth 0)."""
  for name in _stacks(params):
    if "blocks" in params[name]:
      return SCANNED
    if any(BLOCK.match(k) for k in params[name]):
      return UNROLLED
  return None


def _scan_stack(stack: dict) -> dict:
  blocks = sorted((int(BLOCK.match(k).group(1)), k) for k in stack if BLOCK.match(k))
  if not blocks:
    return stack
  rest = {k: v for k, v in stack.items() if not BLOCK.match(k)}
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[stack[k] for _, k in blocks])
  return {**rest, "blocks": {"block": stacked}}


def _unroll_stack(stack: dict) -> dict:
  if "blocks" not in stack:
    return stack
  tree = stack["blocks"]["block"]
  depth = jax.tree.leaves(tree)[0].shape[0]
  rest = {k: v for k, v in stack.items() if k != "blocks"}
  return {**rest, **{f"block_{i}": jax.tree.map(lambda a: a[i], tree) for i in range(depth)}}


def to_layout(params: dict, target: str | None) -> dict:
  """`params` (a dict with the LM's top-level names) in layout `target`
  ('scanned' | 'unrolled'; None: as it is). Works on arrays and, under
  jax.eval_shape, on abstract ones."""
  if target is None or layout(params) in (None, target):
    return params
  convert = _scan_stack if target == SCANNED else _unroll_stack
  return {k: convert(v) if STACK.match(k) else v for k, v in params.items()}


def abstract_like(abstract_params: dict, target: str | None) -> dict:
  """The shapes and dtypes of `abstract_params` in layout `target` (no shardings)."""
  return jax.eval_shape(lambda p: to_layout(p, target), abstract_params)
