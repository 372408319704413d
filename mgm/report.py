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

COLUMNS = ("params", "steps", "train_flops", "tokens_per_sec", "mfu", "wall_s",
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
  lines += ["", "Plots: `loss_vs_flops.png` (bits/byte against training FLOPs), "
            f"`{metric}.png` (the final {metric} per arm)."]
  return "\n".join(lines) + "\n"


def write_csv(path: str, experiment, rows):
  columns = ["arm", experiment.metric, *experiment.extra_metrics, "paper", *COLUMNS]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def colors(n: int) -> list:
  """n distinct colours (tab10, or tab20 past ten arms)."""
  cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
  return [cmap(i % cmap.N) for i in range(n)]


def plot_curves(path: str, curves: dict, floor: float | None):
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for color, (name, curve) in zip(colors(len(curves)), curves.items()):
    if curve["train"]:
      ax.plot(*zip(*curve["train"]), color=color, alpha=0.35, linewidth=1)
    if curve["eval"]:
      ax.plot(*zip(*curve["eval"]), "o-", color=color, label=name, markersize=3)
  if floor:
    ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="entropy floor")
  ax.set(xlabel="training FLOPs", ylabel="bits/byte (eval: points; train: faint)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bars(path: str, rows, metric: str, floor: float | None):
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 4))
  ax.bar(range(len(rows)), [r[metric] for r in rows], color=colors(len(rows)))
  ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
  if floor:
    ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="entropy floor")
    ax.legend(fontsize=8)
  ax.set(ylabel=metric)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(experiment, rows, curves, workdir: str, command_line: str) -> str:
  """results.md, results.csv, loss_vs_flops.png and <metric>.png; returns results.md's path."""
  floors = {r.get("entropy_floor_bpb") for r in rows}
  floor = floors.pop() if len(floors) == 1 else None   # one corpus: draw its floor
  write_csv(os.path.join(workdir, "results.csv"), experiment, rows)
  plot_curves(os.path.join(workdir, "loss_vs_flops.png"), curves, floor)
  plot_bars(os.path.join(workdir, f"{experiment.metric}.png"), rows, experiment.metric, floor)
  path = os.path.join(workdir, "results.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown(experiment, rows, command_line))
  return path
