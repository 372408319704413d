"""What every mode builds from a config before it trains, evaluates or samples:
the model, the optimizer, the initial train state (created sharded on the
mesh), and the train and eval steps jitted for that placement."""
import dataclasses

import jax

from mgm import adversarial as adv_lib
from mgm import distill, flops, sharding
from mgm.data import mixture
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_state, make_eval_step, make_optimizer, make_train_step


@dataclasses.dataclass
class Setup:
  """One config's model, optimizer, initial state (created sharded on the mesh by
  `placement`) and train/eval steps jitted for that placement."""
  config: object
  model: LM
  tx: object
  schedule: object
  state: object
  placement: sharding.Placement
  train_step: object   # (state, global batch) -> (state, metrics); donates state
  eval_step: object    # (params, global batch) -> (sum of nats, token count)
  flops_per_token: float   # analytic training FLOPs per token (mgm/flops.py)
  teachers: distill.Teachers | None = None   # frozen distillation teachers (train only)

  @classmethod
  def create(cls, config, mesh=None, teachers: bool = False):
    """`mesh` defaults to the one `config.mesh` makes of all devices. With
    `teachers`, distill.teachers are restored onto the mesh and the train step
    distils from them (ConfigError naming that field if one cannot be used)."""
    model = LM(spec_lib.from_config(config.model), config.data.packing)
    tx, schedule = make_optimizer(config.train)
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    placement = sharding.make_placement(config, model, tx, mesh)
    shape = (config.train.batch_size, config.data.seq_len)
    adversarial = adv_lib.from_config(config)
    init = placement.jit(lambda rng: init_state(model, tx, rng, shape, adversarial),
                         out_shardings=placement.state)
    loaded = distill.load(config, placement) if teachers else None
    step = placement.train_step(
        make_train_step(model, tx, config.train.grad_accum, config.train.label_smoothing,
                        adversarial, config.seed, tasks=mixture.loss_tasks(config.data),
                        distill=loaded and loaded.distill), loaded and loaded.shardings)
    return cls(config, model, tx, schedule, init(jax.random.key(config.seed)), placement,
               loaded.bind_step(step) if loaded else step,
               placement.eval_step(make_eval_step(model)),
               flops.train_flops_per_token(model.spec, config.data.seq_len), loaded)

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len

  def speed(self, tokens_per_sec: float, step: int) -> dict:
    """Training FLOPs so far, TFLOP/s and MFU at a measured tokens/s."""
    return {"train_flops": step * self.tokens_per_step * self.flops_per_token,
            **flops.utilization(tokens_per_sec, self.flops_per_token)}
