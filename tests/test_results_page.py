"""experiments/results/README.md from the results folders (mgm/results_page.py):
constructed results judged as holds / reversed / within noise / one seed, every
experiment file listed, and the committed page in sync with its folders."""
import json
import os

from mgm import results_page, runner

EXPERIMENT = '''
from mgm.runner import Arm, Experiment

def get_experiment(size="cpu"):
  arms = tuple(Arm(n, "configs/lm.py:tiny") for n in ("a", "b", "c", "d"))
  return Experiment(name="x", title="Constructed", arms=arms, seeds=3,
                    extra_metrics=("eval_bpb_lm",),
                    orderings=(("a", "b"), ("b", "a"), ("a", "c"), ("a", "d"),
                               ("b", "a", "eval_bpb_lm")))
'''
# a 2.0 ± 0.1 (3 seeds); b 2.5 ± 0.1: 0.5 apart, 2 SE = 0.163; c 2.05 ± 0.1: 0.05
# apart; d has no row. On eval_bpb_lm the order turns: b 1.0 ± 0.1 below a 1.5 ± 0.1.
CSV = ("arm,eval_bpb,eval_bpb_std,eval_bpb_lm,eval_bpb_lm_std,seeds,paper\n"
       "a,2.0,0.1,1.5,0.1,3,\nb,2.5,0.1,1.0,0.1,3,\nc,2.05,0.1,,,3,\n")
LEGACY_CSV = "arm,eval_bpb,paper\na,2.0,\nb,1.9,\n"   # before seeds: one run per arm


def make_root(tmp_path):
  """A repository-like root: experiments/{x,y,z}.py, results for x (3 seeds) and y
  (a table from before seeds, no results.json); z has no results."""
  (tmp_path / "experiments").mkdir()
  for name in ("x", "y", "z"):
    (tmp_path / "experiments" / f"{name}.py").write_text(EXPERIMENT)
  results = tmp_path / "experiments" / "results"
  (results / "x").mkdir(parents=True)
  (results / "x" / "results.csv").write_text(CSV)
  (results / "x" / "results.json").write_text(json.dumps(
      {"size": "cpu", "seeds": 3, "machine": "gpu: NVIDIA H200 x1", "date": "2026-11-30",
       "command": "python launch.py --experiment=experiments/x.py:cpu --workdir=runs/x"}))
  (results / "x_long").mkdir()   # a second size of x: its own folder, naming x
  (results / "x_long" / "results.csv").write_text(CSV)
  (results / "x_long" / "results.json").write_text(json.dumps(
      {"experiment": "x", "size": "long", "seeds": 3, "machine": "cpu", "date": "2026-12-01",
       "command": "python launch.py --experiment=experiments/x.py:long --workdir=runs/x_long"}))
  (results / "y").mkdir()
  (results / "y" / "results.csv").write_text(LEGACY_CSV)
  (results / "HISTORY.md").write_text("# Old title\n\nEarlier runs, as they were.\n")
  return results


def test_constructed_results_are_judged(tmp_path):
  results = make_root(tmp_path)
  text = open(results_page.write(str(results), str(tmp_path))).read()
  assert "- a better than b: **holds**" in text
  assert "- b better than a: **reversed**" in text
  assert "- a better than c: **within noise**" in text
  assert "- a better than d: **not recorded**" in text
  assert "- b better than a in eval_bpb_lm: **holds**" in text   # judged on its own metric
  # y: one run per arm, b below a: no test, the single runs' order said
  assert ("- a better than b: **one seed: no test (the single runs are in the opposite "
          "order)**") in text
  assert ("| [x](#x) | cpu | 3 | gpu: NVIDIA H200 x1 | 2026-11-30 | 2 holds, 1 not recorded, "
          "1 reversed, 1 within noise |") in text
  assert "    python launch.py --experiment=experiments/x.py:cpu --workdir=runs/x" in text
  assert "| [x_long](#x_long) | long | 3 | cpu | 2026-12-01 | 2 holds, 1 not recorded, " \
      "1 reversed, 1 within noise |" in text
  assert "| z | | | | | no results recorded yet |" in text
  assert text.endswith("## History\n\nEarlier runs, as they were.\n")


def test_the_committed_results_page_is_what_its_folders_give():
  """Regenerate it (`python -m mgm.results_page`) whenever a results folder changes."""
  results = os.path.join(runner.ROOT, "experiments", "results")
  with open(os.path.join(results, "README.md"), encoding="utf-8") as f:
    assert f.read() == results_page.page(results)
