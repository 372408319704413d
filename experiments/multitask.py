"""Multi-task sharing (issue 14): each task alone against the task mixture, at
matched training FLOPs. Does sharing one decoder (and the encoders by modality)
help or hurt each task?

  python launch.py --experiment=experiments/multitask.py:cpu --workdir=runs/multitask

Arms: `configs/multitask.py` with `task=all` (lm + caption + translate + copy,
rates 1 : 1 : 1 : 0.5, every lambda_i 1) and with each task alone (a one-task
mixture with only the encoder it reads, so its metrics carry the same names).
Every arm gets the mixture's training FLOPs: a task alone sees about 3.5x the
rows of its kind that the mixture gives it. Read each task's column across the
rows: `eval_bpb_<task>` (held-out bits/byte of that task's targets) and, for
the tasks with an input, `heldout_bleu_<task>`; each task's ordering (mixture
better than the task alone) is judged on its `eval_bpb_<task>`. No paper
reports this setup.
"""
from experiments import common
from mgm.errors import ConfigError
from mgm.runner import Arm, Experiment

TASKS = ("lm", "caption", "translate", "copy")
SIZE = {"cpu": "demo", "gpu": "demo", "paper": "small"}


def get_experiment(size: str = "cpu") -> Experiment:
  common.check_size(size)
  if size not in SIZE:
    raise ConfigError("--experiment", f"experiments/multitask.py has no {size!r} size (its "
                      f"targets are tens of bytes); one of {sorted(SIZE)}")
  preset = lambda task: f"configs/multitask.py:size={SIZE[size]},task={task}"
  steps = {"cpu": {"train.steps": 200}, "gpu": {"train.steps": 2000},
           "paper": {"checkpoint.every_minutes": 30.0}}[size]
  arms = (Arm("mixture", preset("all"), dict(steps)),
          *(Arm(f"{task} alone", preset(task), dict(steps)) for task in TASKS))
  return Experiment(
      name="multitask", title="Each task alone against the mixture, at matched training FLOPs",
      arms=arms, match="flops", budget_arm="mixture", seeds=common.SEEDS[size],
      extra_metrics=(*(f"eval_bpb_{t}" for t in TASKS),
                     *(f"heldout_bleu_{t}" for t in TASKS if t != "lm")),
      orderings=tuple(("mixture", f"{task} alone", f"eval_bpb_{task}") for task in TASKS),
      notes="Each task's columns compare the mixture's row with that task's own row; the "
            "`eval_bpb` column mixes the tasks and is not comparable across rows. The "
            "orderings test the hope of sharing (Caruana 1997, *Multitask Learning*, §1: "
            "tasks learned together help each other), each on its own task's held-out "
            "bits/byte. At matched FLOPs the mixture takes fewer steps than any task "
            "alone: every mixture row runs every encoder (a row without that input reads "
            "filler, masked out), and each task gets about 1/3.5 of the mixture's rows.")
