"""The cached decoder's step reads its attention caches in place: the compiled
decode loop holds no transposed copy of a [B, S, ...] cache (on CPU, XLA copied
every [B, S, N, H] cache to a transposed layout at every step, so a step cost
memory traffic of the whole cache twice over; benchmarks/results/generate_batch_scaling.md)."""
import math
import re

import jax

from configs import lm as lm_configs
from jitted import init_params
from mgm import decode
from mgm.model import spec as spec_lib
from mgm.model.lm import LM


def _while_bodies(hlo: str) -> list[str]:
  """The text of every while loop's body computation in optimised HLO."""
  names = set(re.findall(r"body=%([\w.\-]+)", hlo))
  blocks = re.split(r"\n(?=\S)", hlo)                    # one computation per block
  return [b for b in blocks if any(b.startswith(f"%{n} ") for n in names)]


def _element_count(shape: str) -> int:
  return math.prod(int(d) for d in shape.split(",") if d)


def test_decode_loop_copies_no_cache():
  config = lm_configs.get_config("model=flat,size=tiny")
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(0), (2, config.data.seq_len))
  settings = decode.DecodeSettings(strategy="greedy", max_new=16, stop_at_eos=False)
  tokens, lengths = decode.pack_prompts(["ab", "c"], settings, model, config.data.seq_len)
  hlo = decode.generate.lower(model, params, tokens, lengths, jax.random.key(0),
                              settings).compile().as_text()
  cache = tokens.shape[0] * tokens.shape[1] * model.spec.levels[-1].width   # B x S x N*H
  bodies = _while_bodies(hlo)
  assert bodies, "no while loop found in the compiled generate"
  moves = [line.strip()[:160] for body in bodies for line in body.splitlines()
           if (m := re.match(r"\s*%(\S*(?:transpose|copy)\S*) = f32\[([\d,]*)\]", line))
           and _element_count(m.group(2)) == cache]
  assert not moves, f"the decode loop copies a whole cache every step: {moves}"
