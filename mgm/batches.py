"""This process's share of a run's global batches (`Placement.data_shard`): the
training stream and the fixed evaluation batches. `Placement.global_batch`
makes the global arrays of them."""
from mgm.data import mixture, pipeline


def train_stream(config, placement, seed: int):
  """The training batches, shuffled with `seed` and repeated forever (a Grain
  dataset; the checkpoints hold its iterator's position)."""
  index, count = placement.data_shard()
  return pipeline.make_dataset(config.data, "train", batch_size=config.train.batch_size,
                               seed=seed, process_index=index, process_count=count)


def eval_set(config, placement) -> list[dict] | dict[str, list[dict]]:
  """The fixed evaluation batches (train.eval_batches of them); a task mixture's:
  {task name: its train.eval_batches batches}."""
  index, count = placement.data_shard()
  if mixture.is_mixture(config.data):
    return mixture.eval_batches(config.data, batch_size=config.train.batch_size,
                                num_batches=config.train.eval_batches,
                                process_index=index, process_count=count)
  return pipeline.eval_batches(config.data, batch_size=config.train.batch_size,
                               num_batches=config.train.eval_batches,
                               process_index=index, process_count=count)
