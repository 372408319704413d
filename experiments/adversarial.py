"""The adversarial auxiliary loss (mgm/adversarial.py, experimental): does a
discriminator on Gumbel-softmax samples change bits/byte or the held-out
continuations, at matched steps?

  python launch.py --experiment=experiments/adversarial.py:cpu --workdir=runs/adversarial

Arms: the flat model with cross-entropy only; the same with the adversarial term
at lambda_adv 0.1 and a Transformer discriminator; and with an LSTM
discriminator. The same steps, data and seeds for each: the adversarial arms
spend extra FLOPs on the discriminator (not counted in the table's FLOPs). No
paper reports this for byte-level models; text GANs with Gumbel-softmax (Kusner &
Hernandez-Lobato 2016) reported samples, not likelihood, and the common finding
is that adversarial terms do not improve likelihood: the ordering tested here is
cross-entropy only <= adversarial in bits/byte. Sample quality: chrF and ROUGE-L
of greedy continuations of held-out text (`eval.continuations`).
"""
from experiments import common
from mgm.runner import Experiment

PLAIN, TRANSFORMER, LSTM = ("cross-entropy only", "adversarial 0.1, Transformer D",
                            "adversarial 0.1, LSTM D")


def get_experiment(size: str = "cpu") -> Experiment:
  adversarial = {"adversarial.weight": 0.1}
  return Experiment(
      name="adversarial", title="Adversarial auxiliary loss at matched steps",
      arms=(common.arm(PLAIN, "flat", size),
            common.arm(TRANSFORMER, "flat", size, adversarial),
            common.arm(LSTM, "flat", size, {**adversarial,
                                            "adversarial.discriminator": "lstm"})),
      seeds=common.SEEDS[size], match="steps", extra_metrics=("chrf", "rougeL"),
      orderings=((PLAIN, TRANSFORMER), (PLAIN, LSTM)),
      notes="Expected (not a paper's number): the adversarial term does not lower "
            "bits/byte. 'holds' means cross-entropy alone is better by two standard errors.")
