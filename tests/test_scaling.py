"""Compute-scaling curves: the fit L(C) = E + A C^-alpha recovers known parameters,
the crossover of constructed curves is where algebra puts it, the bootstrap
interval covers the truth, degenerate inputs are refused with a reason, and
experiments/scaling.py plans >= 4 budgets a factor >= 8 apart per model within
the cpu size's hour."""
import csv

import numpy as np
import pytest

from experiments import common, scaling
from mgm import report, runner, scaling_fit, scaling_report
from mgm.errors import ConfigError
from mgm.runner import Arm, Experiment
from mgm.scaling_fit import DegenerateFit, Fit

BUDGETS = np.geomspace(1e11, 1e14, 7)


def power_law(e, a, alpha) -> Fit:
  return Fit(e=e, a=a, alpha=alpha, rms=0.0)


def noisy(f: Fit, c, sigma: float, seed: int):
  """f(c) times log-normal noise of log-space standard deviation sigma."""
  return f(c) * np.exp(np.random.default_rng(seed).normal(0.0, sigma, len(c)))


@pytest.mark.parametrize("e, a, alpha", [(1.125, 2e3, 0.3), (0.8, 50.0, 0.12), (2.0, 3e7, 0.6)])
def test_fit_recovers_known_parameters_from_noiseless_points(e, a, alpha):
  c = np.geomspace(6e11, 4.8e12, 4)     # the cpu size's four budgets
  f = scaling_fit.fit(c, power_law(e, a, alpha)(c))
  assert (f.e, f.a, f.alpha) == pytest.approx((e, a, alpha), rel=1e-4)
  assert f.rms < 1e-8


def test_fit_recovers_known_parameters_from_mildly_noisy_points():
  truth = power_law(1.125, 2e3, 0.3)
  f = scaling_fit.fit(BUDGETS, noisy(truth, BUDGETS, 0.005, seed=1))
  assert f.e == pytest.approx(truth.e, abs=0.05)
  assert f.alpha == pytest.approx(truth.alpha, abs=0.03)
  # the curve itself, over the data and one decade past it, within 1%
  grid = np.geomspace(1e11, 1e15, 20)
  assert np.allclose(f(grid), truth(grid), rtol=0.01)


def test_points_in_any_order_and_repeated_budgets_fit_alike():
  truth = power_law(1.5, 1e3, 0.25)
  c = np.repeat(BUDGETS[:4], 2)
  loss = truth(c)
  shuffled = np.random.default_rng(0).permutation(c.size)
  f = scaling_fit.fit(c[shuffled], loss[shuffled])
  assert (f.e, f.alpha) == pytest.approx((truth.e, truth.alpha), rel=1e-4)


def test_the_floor_bounds_e_from_below():
  """A synthetic corpus's entropy floor: no fitted curve may end below it."""
  pure = power_law(0.0, 5e2, 0.2)        # E = 0: unconstrained, the fit finds E ~ 0
  loss = pure(BUDGETS)                   # 3.1 .. 0.79 bits/byte
  assert scaling_fit.fit(BUDGETS, loss).e < 0.01
  bounded = scaling_fit.bootstrap(BUDGETS, noisy(pure, BUDGETS, 0.01, seed=2), n=50, floor=0.5)
  assert bounded.fit.e >= 0.5 and min(f.e for f in bounded.fits) >= 0.5
  with pytest.raises(DegenerateFit, match="not above the floor"):
    scaling_fit.fit(BUDGETS, loss, floor=0.8)


# Two curves of one exponent meet where E_b + A_b C^-a = E_o + A_o C^-a, i.e. at
# C = ((A_o - A_b) / (E_b - E_o)) ** (1 / a).
FLAT = power_law(1.5, 1e3, 0.3)


def test_crossover_where_a_lower_floor_overtakes_a_steeper_start():
  other = power_law(1.2, 3e3, 0.3)      # worse at small budgets, lower E
  expected = ((3e3 - 1e3) / (1.5 - 1.2)) ** (1 / 0.3)
  found = scaling_fit.crossover(FLAT, other, 1e10, 1e16)
  assert found.status == "crosses" and found.back_above is None
  assert found.budget == pytest.approx(expected, rel=1e-6)
  assert other(found.budget * 1.01) < FLAT(found.budget * 1.01)
  assert other(found.budget / 1.01) > FLAT(found.budget / 1.01)


def test_no_crossover_when_never_below_or_outside_the_range():
  worse = power_law(1.6, 2e3, 0.3)      # above flat everywhere
  assert scaling_fit.crossover(FLAT, worse, 1e10, 1e16) == scaling_fit.Crossover(
      None, "never below", 1e10, 1e16)
  later = power_law(1.2, 3e3, 0.3)       # crosses at 5.6e12, beyond a range ending at 1e12
  assert scaling_fit.crossover(FLAT, later, 1e10, 1e12).status == "never below"


def test_below_from_the_start_and_above_again():
  early = power_law(1.7, 5e2, 0.3)      # better at small budgets, higher E
  expected = ((1e3 - 5e2) / (1.7 - 1.5)) ** (1 / 0.3)
  found = scaling_fit.crossover(FLAT, early, 1e10, 1e16)
  assert (found.budget, found.status) == (None, "below from the start")
  assert found.back_above == pytest.approx(expected, rel=1e-6)
  assert scaling_fit.crossover(FLAT, early, 1e10, expected / 2).back_above is None


def test_bootstrap_interval_contains_the_truth_on_a_noisy_case():
  truth = power_law(1.125, 2e3, 0.3)
  result = scaling_fit.bootstrap(BUDGETS, noisy(truth, BUDGETS, 0.01, seed=3), n=200, seed=0)
  assert result.method == "residuals" and len(result.fits) + result.failed == 200
  for name in ("e", "a", "alpha"):
    low, high = result.interval(name)
    assert low < getattr(truth, name) < high, (name, low, high)
    assert low < getattr(result.fit, name) < high
  low, high = result.band(BUDGETS)
  assert np.all(low < truth(BUDGETS)) and np.all(truth(BUDGETS) < high)


def test_bootstrap_over_seeds_resamples_within_budgets_and_brackets_the_crossover():
  c = np.repeat(BUDGETS[:5], 3)          # three seeds per budget
  flat_truth, other_truth = FLAT, power_law(1.2, 3e3, 0.3)
  flat = scaling_fit.bootstrap(c, noisy(flat_truth, c, 0.005, seed=4), n=150, seed=1)
  other = scaling_fit.bootstrap(c, noisy(other_truth, c, 0.005, seed=5), n=150, seed=1)
  assert flat.method == other.method == "cases"
  (low, high), share = scaling_fit.crossover_interval(flat, other, 1e10, 1e16)
  expected = scaling_fit.crossover(flat_truth, other_truth, 1e10, 1e16).budget
  assert low < expected < high and share > 0.9


@pytest.mark.parametrize("c, loss, reason", [
    ([1e11, 1e12], [3.0, 2.0], "2 distinct budget"),
    ([1e11, 1e11, 1e12, 1e12], [3.0, 3.1, 2.0, 2.1], "2 distinct budget"),
    ([1e11, 1e12, 1e13], [2.0, 2.5, 3.0], "does not fall"),
    ([1e11, 1e12, 1e13], [2.0, 2.0, 2.0], "does not fall"),
    ([1e11, 1e12, 1e13], [3.0, float("nan"), 2.0], "not finite"),
    ([1e11, 1e12, 1e13], [3.0, 0.0, 2.0], "> 0"),
    ([1e11, 1e12, 1e13], [3.0, 2.0], "3 budgets but 2 losses"),
])
def test_degenerate_points_are_refused_with_the_reason(c, loss, reason):
  with pytest.raises(DegenerateFit, match=reason):
    scaling_fit.fit(c, loss)
  with pytest.raises(DegenerateFit, match=reason):
    scaling_fit.bootstrap(c, loss, n=10)


def scaling_experiment(models=("flat", "mgm3")) -> Experiment:
  """Arms of two series at four budgets each (never trained: the rows are made up)."""
  return Experiment(
      name="s", title="S", baseline="flat",
      arms=tuple(Arm(f"{m} x{s}", "configs/lm.py:tiny", budget_scale=s, series=("synthetic", m))
                 for m in models for s in (0.25, 0.5, 1, 2)))


def rows_for(experiment, truths: dict) -> list[dict]:
  rows = []
  for arm in experiment.arms:
    c = arm.budget_scale * 2e12
    rows.append({"arm": arm.name, "paper": None, "train_flops": c, "steps": 10,
                 "eval_bpb": float(truths[arm.series[1]](c)), "entropy_floor_bpb": 1.125})
  return rows


@pytest.fixture
def few_replicates(monkeypatch):
  monkeypatch.setattr(scaling_report, "REPLICATES", 50)


def test_report_writes_the_scaling_plot_and_fit_table(tmp_path, few_replicates):
  experiment = scaling_experiment(("flat", "mgm3", "megabyte"))
  truths = {"flat": FLAT, "mgm3": power_law(1.2, 3e3, 0.3),
            "megabyte": power_law(0.0, 5e2, 0.2)}      # 2.3 .. 1.4: E ~ 0 but for the floor
  rows = rows_for(experiment, truths)
  curves = {r["arm"]: [{"train": [(r["train_flops"], r["eval_bpb"])],
                        "eval": [(r["train_flops"], r["eval_bpb"])]}] for r in rows}
  summaries = {r["arm"]: [{k: v for k, v in r.items() if k not in ("arm", "paper")}]
               for r in rows}   # one seed per arm, as the runner passes them
  path = report.write(experiment, summaries, curves, str(tmp_path), "python launch.py ...")
  assert (tmp_path / "scaling.png").stat().st_size > 0
  assert [r["arm"] for r in csv.DictReader(open(tmp_path / "results.csv"))] == \
      [a.name for a in experiment.arms]
  table = open(path).read().split("## Compute scaling", 1)[1]
  line = next(l for l in table.splitlines() if l.startswith("| mgm3 |"))
  cells = [c.strip() for c in line.split("|")[1:-1]]
  assert float(cells[2]) == pytest.approx(1.2, rel=1e-3)          # E
  assert float(cells[5]) == pytest.approx(0.3, rel=1e-3)          # alpha
  expected = scaling_fit.crossover(FLAT, truths["mgm3"], 5e11, 4e14).budget
  assert cells[8].startswith(f"{expected:.3g} FLOPs")
  assert "| flat |" in table and "baseline" in table
  line = next(l for l in table.splitlines() if l.startswith("| megabyte |"))
  assert float(line.split("|")[3]) >= 1.125                       # E, bounded by the floor


def test_report_says_why_a_series_has_no_fit(tmp_path, few_replicates):
  experiment = scaling_experiment()
  rows = rows_for(experiment, {"flat": FLAT, "mgm3": power_law(1.2, 3e3, 0.3)})
  for row in rows:
    if row["arm"].startswith("mgm3"):
      row["eval_bpb"] = 2.5                        # flat: no fall with compute
  results = tmp_path / "results.md"
  results.write_text("# table\n")
  scaling_report.write(experiment, rows, str(tmp_path), str(results))
  line = next(l for l in results.read_text().splitlines() if l.startswith("| mgm3 |"))
  assert "no fit: the loss does not fall with compute" in line
  assert "no flat or no mgm3 fit" in line
  assert (tmp_path / "scaling.png").stat().st_size > 0


def series_budgets(experiment) -> dict:
  """{(corpus, model): sorted planned training FLOPs of its arms}."""
  plans, out = runner.planned_overrides(experiment), {}
  for arm in experiment.arms:
    config = runner.arm_config(arm, plans[arm.name])
    out.setdefault(arm.series, []).append(runner.flops_per_step(config) * config.train.steps)
  return {key: sorted(values) for key, values in out.items()}


@pytest.mark.parametrize("size", common.SIZES)
def test_scaling_experiment_spans_at_least_8x_per_model_at_every_size(size):
  experiment = runner.load(f"experiments/scaling.py:{size}")
  budgets = series_budgets(experiment)
  models = {"flat", "megabyte", "hourglass", "spacebyte", "mgm3"}
  corpora = {corpus for corpus, _ in budgets}
  assert "synthetic" in corpora and corpora == set(scaling.corpora(size))
  assert len(corpora) == (2 if size == "paper" or (common.shared_text() and size in ("cpu", "long"))
                          else 1)
  for corpus in corpora:
    assert {m for c, m in budgets if c == corpus} == models
  for key, flops in budgets.items():
    assert len(flops) >= 4 and flops[-1] / flops[0] >= 8 * 0.98, (key, flops)
  # one budget buys every model the same training FLOPs (within a step's worth)
  largest = [flops[-1] for flops in budgets.values()]
  assert max(largest) / min(largest) < 1.02


def test_cpu_size_fits_an_hour_on_two_cores():
  """At 100 GFLOP/s effective (README: ~25% MFU of a ~300-500 GFLOP/s XLA probe)
  plus 20 s of compilation and evaluation per arm."""
  experiment = runner.load("experiments/scaling.py:cpu")
  total = sum(sum(flops) for flops in series_budgets(experiment).values())
  assert total / 100e9 + 20 * len(experiment.arms) <= 3600


@pytest.mark.parametrize("match", ["flops", "steps"])
def test_budget_scale_multiplies_an_arms_steps(match):
  quick = {"train.steps": 40, "train.warmup_steps": 1}
  experiment = Experiment("b", "B", match=match, arms=(
      Arm("one", "configs/lm.py:tiny", quick),
      Arm("quarter", "configs/lm.py:tiny", quick, budget_scale=0.25),
      Arm("double", "configs/lm.py:tiny", quick, budget_scale=2.0)))
  steps = {name: plan["train.steps"]
           for name, plan in runner.planned_overrides(experiment).items()}
  assert steps == {"one": 40, "quarter": 10, "double": 80}


@pytest.mark.parametrize("change, field", [
    (dict(arms=(Arm("a", "configs/lm.py:tiny", budget_scale=0.0),)), "a: budget_scale"),
    (dict(arms=(Arm("a", "configs/lm.py:tiny", budget_scale=-1.0),)), "a: budget_scale"),
    (dict(arms=(Arm("a", "configs/lm.py:tiny", series=("synthetic",)),)), "a: series"),
    (dict(baseline="transformer"), "baseline"),
])
def test_bad_budgets_name_the_field(change, field):
  experiment = Experiment("s", "S", **{**dict(arms=scaling_experiment().arms), **change})
  with pytest.raises(ConfigError, match=f"config field `{field}`"):
    runner.check(experiment)


def test_scaling_refuses_a_size_it_has_no_budgets_for(monkeypatch):
  monkeypatch.setattr(common, "SIZES", (*common.SIZES, "huge"))
  with pytest.raises(ConfigError, match="no 'huge' size"):
    runner.load("experiments/scaling.py:huge")


def test_an_arm_with_one_row_per_seed_is_resampled_by_seed(tmp_path, few_replicates):
  experiment = scaling_experiment()
  truths = {"flat": FLAT, "mgm3": power_law(1.2, 3e3, 0.3)}
  rows = [dict(row, eval_bpb=row["eval_bpb"] * (1 + 0.003 * (seed - 1)))
          for seed in range(3) for row in rows_for(experiment, truths)]
  results = tmp_path / "results.md"
  results.write_text("# table\n")
  scaling_report.write(experiment, rows, str(tmp_path), str(results))
  line = next(l for l in results.read_text().splitlines() if l.startswith("| flat |"))
  cells = [c.strip() for c in line.split("|")[1:-1]]
  assert cells[1] == "12" and cells[9].endswith("(cases)")
