"""An experiment's results: results.md, results.csv, results.json and the PNG plots.

Each arm has one summary.json per seed; its row holds the mean over seeds of
every column, the sample standard deviation of the metric and the extra
metrics (`<metric>_std`) and the number of seeds. Curves are the runs'
metrics.jsonl against cumulative training FLOPs, one per seed.
"""
import csv
import datetime
import json
import math
import os
import platform

import matplotlib

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from mgm import runner, significance  # noqa: E402

COLUMNS = ("params", "steps", "train_flops", "tokens_per_sec", "mfu", "peak_flops", "wall_s",
           "unigram_bpb", "entropy_floor_bpb")


def read_curve(directory: str) -> dict:
  """{'train': [(flops, bpb)], 'eval': [(flops, eval_bpb)]} from metrics.jsonl."""
  curve = {"train": [], "eval": []}
  with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if "train_flops" not in row:
        continue
      curve["train"].append((row["train_flops"], row["bpb"]))
      if "eval_bpb" in row:
        curve["eval"].append((row["train_flops"], row["eval_bpb"]))
  return curve


def aggregate(experiment, summaries: dict) -> list[dict]:
  """{arm name: [summary.json per seed]} -> one row per arm (experiment order):
  'arm', 'paper', 'seeds', the mean of every numeric summary field, and
  '<m>_std' (sample std, None for one seed) for the metric and extra metrics."""
  rows = []
  for arm in experiment.arms:
    runs = summaries[arm.name]
    row = {"arm": arm.name, "paper": arm.paper, "seeds": len(runs)}
    for key in {k for run in runs for k in run}:
      values = [run.get(key) for run in runs]
      if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        mean, std = significance.mean_std(values)
        row[key] = values[0] if len(set(values)) == 1 else mean   # ints stay ints
        if key in (experiment.metric, *experiment.extra_metrics):
          row[f"{key}_std"] = std
    rows.append(row)
  return rows


def _stats(row: dict, metric: str) -> tuple:
  return row[metric], row.get(f"{metric}_std"), int(row.get("seeds") or 1)


def orderings(experiment, rows) -> list[dict]:
  """Each ordering the paper reports, judged on our rows: {'better', 'worse',
  'metric' (runner.ordering_metric), 'verdict' (significance.VERDICTS, or 'not
  recorded' when an arm has no row), 'difference' (worse - better mean), 'se'}."""
  by_name = {r["arm"]: r for r in rows}
  judged = []
  for ordering in experiment.orderings:
    better, worse, metric = *ordering[:2], runner.ordering_metric(experiment, ordering)
    b, w = by_name.get(better), by_name.get(worse)
    base = {"better": better, "worse": worse, "metric": metric}
    if b is None or w is None or b.get(metric) is None or w.get(metric) is None:
      judged.append({**base, "verdict": "not recorded", "difference": None, "se": None})
      continue
    sb, sw = _stats(b, metric), _stats(w, metric)
    judged.append({**base, "verdict": significance.verdict(sb, sw),
                   "difference": sw[0] - sb[0], "se": significance.standard_error(sb, sw)})
  return judged


def ordering_lines(experiment, rows) -> list[str]:
  """Each ordering the paper reports, with its numbers and our verdict."""
  by_name = {r["arm"]: r for r in rows}
  lines = []
  for o in orderings(experiment, rows):
    b, w, metric = by_name.get(o["better"], {}), by_name.get(o["worse"], {}), o["metric"]
    paper = (f"paper {_num(b['paper'])} < {_num(w['paper'])}"
             if b.get("paper") is not None and w.get("paper") is not None
             else "paper: stated in text" if experiment.paper_metric else "claimed, no number")
    ours = ""
    if o["difference"] is not None:
      ours = (f": ours {_mean_std(b, metric)} vs {_mean_std(w, metric)}, difference "
              f"{o['difference']:+.4f}" + (f" (2 SE {2 * o['se']:.4f})" if o["se"] else ""))
    on = "" if metric == experiment.metric else f" in {metric}"
    lines.append(f"- {o['better']} better than {o['worse']}{on} ({paper}){ours}, "
                 f"**{o['verdict']}**")
  return lines


def _num(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if isinstance(value, int):
    return f"{value:,}"
  if abs(value) >= 1e6:
    return f"{value:.3g}"
  return f"{value:.4g}"


def _format(column, value) -> str:
  if value is None:
    return ""
  if column == "params":
    return f"{value / 1e6:.2f}M"
  if column == "train_flops":
    return f"{value / 1e12:.2f}T"
  if column == "mfu":
    return f"{value:.1%}"
  if column == "peak_flops":
    return f"{value / 1e9:,.0f}G"
  if column in ("tokens_per_sec", "wall_s"):
    return f"{value:,.0f}"
  return _num(value)


def _mean_std(row: dict, column: str) -> str:
  """'mean ± std' (sample std over seeds), or the mean alone for one seed."""
  std = row.get(f"{column}_std")
  return _num(row.get(column)) + (f" ± {std:.2g}" if std is not None else "")


def markdown(experiment, rows, command_line: str) -> str:
  metric = experiment.metric
  judged = (metric, *experiment.extra_metrics)
  columns = [metric, *experiment.extra_metrics, "seeds", "paper", *COLUMNS]
  match = ("the same training FLOPs (as many steps as the budget buys)"
           if experiment.match == "flops" else "the same number of steps")
  lines = [f"# {experiment.title}", "", f"    {command_line}", "",
           f"Arms matched at {match}. `{metric}`: ours, lower is better; mean ± sample "
           f"standard deviation over `seeds` runs (config.seed: initialisation and data "
           f"order), the other columns their mean. "
           f"`paper`: {experiment.paper_metric or 'no published number'}.", "",
           "| arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for row in rows:
    cells = (_mean_std(row, c) if c in judged else _format(c, row.get(c)) for c in columns)
    lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
  claims = ordering_lines(experiment, rows)
  if claims:
    lines += ["", "Orderings claimed (by the paper, or as the notes below say), and ours. "
              "The difference is the worse arm's mean minus the better arm's: positive is "
              "the claimed order. Holds / reversed: the difference is at least 2 standard "
              "errors of the difference of the means, positive / negative; within noise: "
              "less; one seed: no spread to test against:", "", *claims]
  if experiment.notes:
    lines += ["", experiment.notes.strip()]
  lines += ["", "`mfu` is against `peak_flops` (FLOP/s; on a CPU the fastest XLA matmul "
            "probe of the process, which the arms share; README \"FLOPs and MFU\"). "
            "`tokens_per_sec`, `mfu` and `wall_s` are the machine's at the time, and vary "
            "2-3x with other load on a shared CPU.", "",
            "Plots: `loss_vs_flops.png` (bits/byte against training FLOPs; the mean over "
            "seeds, the band their min..max), "
            f"`{metric}.png` (the final {metric} per arm, error bars ± one std; the paper's "
            "numbers beside)."]
  return "\n".join(lines) + "\n"


def csv_columns(experiment) -> list[str]:
  judged = (experiment.metric, *experiment.extra_metrics)
  return ["arm", *[c for m in judged for c in (m, f"{m}_std")], "seeds", "paper", *COLUMNS]


def write_csv(path: str, experiment, rows):
  columns = csv_columns(experiment)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


LINES_PER_PANEL = 8   # arms per loss-curve panel: more are hard to tell apart


def colors(n: int) -> list:
  """n distinct colours (tab10, or tab20 past ten arms)."""
  cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
  return [cmap(i % cmap.N) for i in range(n)]


def y_range(values, floor: float | None) -> tuple[float, float]:
  """(low, high) of a bits/byte axis: from just below the lowest value (or the
  floor), not from zero; the top at the 90th percentile of the values or the
  highest one it must show, so early-training values and loss spikes do not
  squash the curves (they run off the top)."""
  values = sorted(values)
  low = min(values[0], floor) if floor else values[0]
  high = values[min(len(values) - 1, int(0.9 * len(values)))]
  pad = 0.05 * (high - low or 1.0)
  return low - pad, high + pad


def seed_band(points: list[list[tuple]]) -> tuple:
  """One arm's curve over seeds -> (x, mean, low, high) arrays: the seeds' points
  matched by position (the same steps, so the same FLOPs), cut to the shortest."""
  n = min(len(p) for p in points)
  x = np.array([f for f, _ in points[0][:n]], dtype=np.float64)
  y = np.array([[v for _, v in p[:n]] for p in points], dtype=np.float64).reshape(len(points), n)
  return x, y.mean(0), y.min(0), y.max(0)


def plot_curves(path: str, curves: dict, floor: float | None, title: str = ""):
  """Bits/byte against training FLOPs, `curves` {arm: [curve per seed]}: the eval
  points' mean over seeds joined, shaded from the seeds' min to max; the train
  curve's mean faint; at most LINES_PER_PANEL arms per panel (panels share the y axis)."""
  names = list(curves)
  panels = [names[i:i + LINES_PER_PANEL] for i in range(0, len(names), LINES_PER_PANEL)]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2.5, 4.5),
                           sharey=True, squeeze=False, layout="constrained")
  palette = {name: color for panel in panels for name, color in zip(panel, colors(len(panel)))}
  evals = [v for runs in curves.values() for c in runs for _, v in c["eval"]]
  trains = [v for runs in curves.values() for c in runs for _, v in c["train"]]
  low, high = y_range(evals + trains, floor)
  high = max(high, max(evals, default=high) + 0.05 * (high - low))   # every eval point shows
  for ax, panel in zip(axes[0], panels):
    for name in panel:
      runs, color = curves[name], palette[name]
      if all(c["train"] for c in runs):
        x, mean, _, _ = seed_band([c["train"] for c in runs])
        ax.plot(x, mean, color=color, alpha=0.3, linewidth=1)
      if all(c["eval"] for c in runs):
        x, mean, lo, hi = seed_band([c["eval"] for c in runs])
        label = name if len(runs) == 1 else f"{name} ({len(runs)} seeds)"
        ax.plot(x, mean, "o-", color=color, label=label, markersize=3)
        if len(runs) > 1:
          ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    if floor:
      ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="entropy floor")
    ax.set(xlabel="training FLOPs", ylim=(low, high))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  axes[0][0].set_ylabel("bits/byte (eval: mean, band min..max over seeds;\ntrain: faint) "
                        "earlier train values run off the top")
  fig.suptitle(title or "bits/byte against training FLOPs")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bars(path: str, rows, metric: str, floor: float | None, title: str = "",
              paper_metric: str = ""):
  """Each arm's final `metric` (mean over seeds) as a labelled bar with an error
  bar of ± one sample std where there are seeds; the paper's number (its own
  data and budget) as a marker beside it; the entropy floor as a line."""
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)) + 2.5, 4.5), layout="constrained")
  ours = [r[metric] for r in rows]
  paper = [(i, r["paper"]) for i, r in enumerate(rows) if r.get("paper") is not None]
  stds = [r.get(f"{metric}_std") or 0.0 for r in rows]
  bars = ax.bar(range(len(rows)), ours, color=colors(len(rows)), label="ours (mean, ± std)",
                yerr=stds, capsize=3, error_kw={"linewidth": 1})
  ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
  if paper:
    ax.plot([i + 0.3 for i, _ in paper], [v for _, v in paper], "kD", markersize=5,
            label=f"paper: {paper_metric or 'its number'}")
    for i, v in paper:
      ax.annotate(f"{v:.3g}", (i + 0.3, v), textcoords="offset points", xytext=(4, -3),
                  fontsize=7)
  if floor:
    ax.axhline(floor, color="k", linestyle="--", linewidth=1, label=f"entropy floor {floor:.3f}")
  low, _ = y_range([m - s for m, s in zip(ours, stds)] + [v for _, v in paper], floor)
  top = max([m + s for m, s in zip(ours, stds)] + [v for _, v in paper])
  ax.set_ylim(low, top + 0.12 * (top - low))   # room for the labels
  ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
  ax.set(ylabel=f"{metric} (lower is better)")
  fig.suptitle(title or metric)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def machine() -> str:
  """This process's accelerator (or CPU) and core count, for the results' record."""
  import jax   # deferred: reading or writing a table needs no backend otherwise
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"{jax.default_backend()}: {', '.join(kinds)} x{len(devices)}, "
          f"{os.cpu_count()} CPU cores ({platform.node() or 'host'})")


def write(experiment, summaries: dict, curves: dict, workdir: str, command_line: str,
          size: str = "") -> str:
  """{arm: [summary per seed]} and {arm: [curve per seed]} -> results.md,
  results.csv, results.json (the run's record: size, seeds, machine, date,
  command, the orderings' verdicts), loss_vs_flops.png and <metric>.png (and,
  for arms with a series, scaling.png and the fits: mgm/scaling_report.py);
  returns results.md's path."""
  rows = aggregate(experiment, summaries)
  floors = {r.get("entropy_floor_bpb") for r in rows}
  floor = floors.pop() if len(floors) == 1 else None   # one corpus: draw its floor
  write_csv(os.path.join(workdir, "results.csv"), experiment, rows)
  today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
  record = {"experiment": experiment.name, "size": size, "seeds": experiment.seeds,
            "machine": machine(), "date": today, "command": command_line,
            "orderings": orderings(experiment, rows)}
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  plot_curves(os.path.join(workdir, "loss_vs_flops.png"), curves, floor,
              f"{experiment.title}: bits/byte against training FLOPs")
  plot_bars(os.path.join(workdir, f"{experiment.metric}.png"), rows, experiment.metric, floor,
            f"{experiment.title}: final {experiment.metric}", experiment.paper_metric)
  path = os.path.join(workdir, "results.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown(experiment, rows, command_line))
  if any(arm.series for arm in experiment.arms):   # scaling curves: fits, scaling.png
    from mgm import scaling_report   # noqa: PLC0415  (it imports this module)
    per_seed = [{**run, "arm": arm} for arm, runs in summaries.items() for run in runs]
    scaling_report.write(experiment, per_seed, workdir, path)
  return path
