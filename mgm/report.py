"""An experiment's results: results.md, results.csv and the PNG plots.

Rows are the arms' summary.json (plus the arm's name and paper number); curves
are their metrics.jsonl against cumulative training FLOPs.
"""
import csv
import json
import math
import os

import matplotlib

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

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


def ordering_lines(experiment, rows) -> list[str]:
  """Each ordering the paper reports, with its numbers and whether ours holds."""
  by_name, metric = {r["arm"]: r for r in rows}, experiment.metric
  lines = []
  for better, worse in experiment.orderings:
    b, w = by_name[better], by_name[worse]
    paper = (f"paper {_num(b['paper'])} < {_num(w['paper'])}"
             if b["paper"] is not None and w["paper"] is not None else "paper: stated in text")
    holds = b[metric] < w[metric]
    lines.append(f"- {better} better than {worse} ({paper}): ours {_num(b[metric])} vs "
                 f"{_num(w[metric])}, **{'holds' if holds else 'does not hold'}**")
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


def markdown(experiment, rows, command_line: str) -> str:
  metric = experiment.metric
  columns = [metric, *experiment.extra_metrics, "paper", *COLUMNS]
  match = ("the same training FLOPs (as many steps as the budget buys)"
           if experiment.match == "flops" else "the same number of steps")
  lines = [f"# {experiment.title}", "", f"    {command_line}", "",
           f"Arms matched at {match}. `{metric}`: ours, lower is better. "
           f"`paper`: {experiment.paper_metric or 'no published number'}.", "",
           "| arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for row in rows:
    lines.append(f"| {row['arm']} | " + " | ".join(_format(c, row.get(c)) for c in columns)
                 + " |")
  orderings = ordering_lines(experiment, rows)
  if orderings:
    lines += ["", "Orderings the paper reports, and ours:", "", *orderings]
  if experiment.notes:
    lines += ["", experiment.notes.strip()]
  lines += ["", "`mfu` is against `peak_flops` (FLOP/s; on a CPU the fastest XLA matmul "
            "probe of the process, which the arms share; README \"FLOPs and MFU\"). "
            "`tokens_per_sec`, `mfu` and `wall_s` are the machine's at the time, and vary "
            "2-3x with other load on a shared CPU.", "",
            "Plots: `loss_vs_flops.png` (bits/byte against training FLOPs), "
            f"`{metric}.png` (the final {metric} per arm, the paper's numbers beside)."]
  return "\n".join(lines) + "\n"


def write_csv(path: str, experiment, rows):
  columns = ["arm", experiment.metric, *experiment.extra_metrics, "paper", *COLUMNS]
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


def plot_curves(path: str, curves: dict, floor: float | None, title: str = ""):
  """Bits/byte against training FLOPs: eval points joined, the train curve faint;
  at most LINES_PER_PANEL arms per panel (panels share the y axis)."""
  names = list(curves)
  panels = [names[i:i + LINES_PER_PANEL] for i in range(0, len(names), LINES_PER_PANEL)]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2.5, 4.5),
                           sharey=True, squeeze=False, layout="constrained")
  palette = {name: color for panel in panels for name, color in zip(panel, colors(len(panel)))}
  evals = [v for c in curves.values() for _, v in c["eval"]]
  trains = [v for c in curves.values() for _, v in c["train"]]
  low, high = y_range(evals + trains, floor)
  high = max(high, max(evals, default=high) + 0.05 * (high - low))   # every eval point shows
  for ax, panel in zip(axes[0], panels):
    for name in panel:
      curve = curves[name]
      if curve["train"]:
        ax.plot(*zip(*curve["train"]), color=palette[name], alpha=0.3, linewidth=1)
      if curve["eval"]:
        ax.plot(*zip(*curve["eval"]), "o-", color=palette[name], label=name, markersize=3)
    if floor:
      ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="entropy floor")
    ax.set(xlabel="training FLOPs", ylim=(low, high))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  axes[0][0].set_ylabel("bits/byte (eval: points; train: faint)\nearlier train values "
                        "run off the top")
  fig.suptitle(title or "bits/byte against training FLOPs")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bars(path: str, rows, metric: str, floor: float | None, title: str = "",
              paper_metric: str = ""):
  """Each arm's final `metric` as a labelled bar; the paper's number (its own
  data and budget) as a marker beside it; the entropy floor as a line."""
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)) + 2.5, 4.5), layout="constrained")
  ours = [r[metric] for r in rows]
  paper = [(i, r["paper"]) for i, r in enumerate(rows) if r.get("paper") is not None]
  bars = ax.bar(range(len(rows)), ours, color=colors(len(rows)), label="ours")
  ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
  if paper:
    ax.plot([i + 0.3 for i, _ in paper], [v for _, v in paper], "kD", markersize=5,
            label=f"paper: {paper_metric or 'its number'}")
    for i, v in paper:
      ax.annotate(f"{v:.3g}", (i + 0.3, v), textcoords="offset points", xytext=(4, -3),
                  fontsize=7)
  if floor:
    ax.axhline(floor, color="k", linestyle="--", linewidth=1, label=f"entropy floor {floor:.3f}")
  low, _ = y_range(ours + [v for _, v in paper], floor)
  top = max(ours + [v for _, v in paper])
  ax.set_ylim(low, top + 0.12 * (top - low))   # room for the labels
  ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
  ax.set(ylabel=f"{metric} (lower is better)")
  fig.suptitle(title or metric)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(experiment, rows, curves, workdir: str, command_line: str) -> str:
  """results.md, results.csv, loss_vs_flops.png and <metric>.png (and, for arms with a
  series, scaling.png and the fits: mgm/scaling_report.py); returns results.md's path."""
  floors = {r.get("entropy_floor_bpb") for r in rows}
  floor = floors.pop() if len(floors) == 1 else None   # one corpus: draw its floor
  write_csv(os.path.join(workdir, "results.csv"), experiment, rows)
  plot_curves(os.path.join(workdir, "loss_vs_flops.png"), curves, floor,
              f"{experiment.title}: bits/byte against training FLOPs")
  plot_bars(os.path.join(workdir, f"{experiment.metric}.png"), rows, experiment.metric, floor,
            f"{experiment.title}: final {experiment.metric}", experiment.paper_metric)
  path = os.path.join(workdir, "results.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown(experiment, rows, command_line))
  if any(arm.series for arm in experiment.arms):   # scaling curves: fits, scaling.png
    from mgm import scaling_report   # noqa: PLC0415  (it imports this module)
    scaling_report.write(experiment, rows, workdir, path)
  return path
