"""mgm.train's initialisers, jitted, for tests (not a test itself).

Called as they are, `init_params` and `init_state` run the model's forward pass
op by op, each op compiled on its own: 2-11 s of CPU for a `tiny` preset. Jitted,
each is one program (1-3 s), compiled once per (model, shape) in a process. The
same functions of the same arguments: only how they are dispatched differs.
"""
import jax

from mgm import train

init_params = jax.jit(train.init_params, static_argnums=(0, 2))
init_state = jax.jit(train.init_state, static_argnums=(0, 1, 3))
