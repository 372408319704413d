"""Distillation from a teacher ensemble (issue 14; mgm/distill.py): a small flat
student trained alone against the same student distilled from three larger
teachers of different granularities (flat, MEGABYTE, mgm3), at matched student
steps.

  python launch.py --experiment=experiments/distill.py:cpu --workdir=runs/distill

The teachers are arms of the experiment itself (3x the students' steps), trained first (each seed k of a
student reads the teachers' seed k: `{arms}/<teacher>/seed_{seed}`, see
runner.runs). Student: the size's flat preset at half its width and depth.
Loss (1 - alpha) CE + alpha tau^2 KL(p_teachers || p_student), alpha 0.5, tau 2
(Hinton et al. 2015 §2; p_teachers the mean of the teachers' probabilities).
The teachers' forward passes are not in the students' FLOPs. The ordering tested:
the distilled student is better than the student alone.
"""
from experiments import common
from mgm.runner import Experiment, slug

TEACHERS = {"teacher: flat": "flat", "teacher: MEGABYTE": "megabyte", "teacher: mgm3": "mgm3"}
ALONE, DISTILLED = "student alone", "student distilled from 3 teachers"
WIDTH = {"cpu": 64, "long": 64, "gpu": 64, "paper": 256}   # the student's: half the teachers'


def student(size: str, extra: dict | None = None):
  shape = {"model.levels[0].width": WIDTH[size], "model.levels[0].depth": 2,
           "model.levels[0].heads": 2}
  return {**shape, **(extra or {})}


def teacher_steps(size: str) -> dict:
  """Teachers train 3x the size's steps (better teachers than the student's budget)."""
  steps = common.overrides(size).get("train.steps")
  return {"train.steps": 3 * steps, "train.warmup_steps": 3 * steps // 10} if steps else {}


def get_experiment(size: str = "cpu") -> Experiment:
  teachers = ",".join(f"{{arms}}/{slug(name)}/seed_{{seed}}" for name in TEACHERS)
  distill = {"distill.teachers": teachers, "distill.alpha": 0.5, "distill.temperature": 2.0}
  return Experiment(
      name="distill", title="A small student alone and distilled from three teachers",
      arms=(*(common.arm(name, model, size, teacher_steps(size))
              for name, model in TEACHERS.items()),
            common.arm(ALONE, "flat", size, student(size)),
            common.arm(DISTILLED, "flat", size, student(size, distill))),
      seeds=common.SEEDS[size], match="steps", orderings=((DISTILLED, ALONE),),
      notes="Rows 1-3 are the teachers (bigger models, for reference); compare the two "
            "student rows. Matched student steps; the distilled student also runs three "
            "teacher forward passes a step (benchmarks/results/distill.md: 1.3-1.5x a "
            "plain step's time for one or two teachers).")
