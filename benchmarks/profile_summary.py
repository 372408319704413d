"""A jax.profiler trace summed by XLA op: the top ops by total time.

    python -m benchmarks.profile_summary WORKDIR [--top=10] [--module=jit_train_step]

WORKDIR is a run's workdir (traced with --config.profile.steps=a,b, see
mgm/profiling.py), its profile/ directory, one trace run directory or one
*.trace.json.gz; the newest run under it is read. jax writes the trace twice:
<host>.xplane.pb (a protobuf for TensorBoard/XProf, which this environment does
not install) and <host>.trace.json.gz, Chrome trace JSON, read here with the
standard library. Each executed XLA op is one complete event ("ph": "X") whose
args name its program (`hlo_module`) and op (`hlo_op`); times are microseconds
in the file, milliseconds here.

Op names are XLA's instruction names, so the kind of an op is told by its name
(`kind_of`): `dot.12` is a matmul, on GPU `gemm`/`cublas`/`triton_gemm`
kernels too; on CPU `ynn_fusion.N` is a call into the YNNPACK library, which
XLA:CPU uses for dots (and some reductions and elementwise ops next to them),
and `*_fusion` are XLA's own loops (elementwise, copies, transposes). An op
runs once per device per step: with 8 devices, count is 8 x steps. On a CPU,
ops of one program may run at once on several threads, so op time can exceed
the wall time of the traced window (`busy` > 1).
"""
import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re

# Kind of an op by its name (first match; lower case), see the module docstring.
KINDS = (("dot", r"^dot|gemm|cublas|matmul|cutlass|xmma|conv"),
         ("ynn (library: dots, some reductions)", r"^ynn_fusion"),
         ("collective", r"all-reduce|all-gather|reduce-scatter|all-to-all|collective|"
                        r"^all_|^reduce_scatter"),
         ("copy/transpose", r"^(copy|transpose|bitcast|concatenate|slice|dynamic|pad)"),
         ("reduce", r"^reduce"),
         ("fusion (elementwise)", r"fusion"))


def kind_of(name: str) -> str:
  """An op's kind from its XLA name ('dot.12' -> 'dot'); 'other' when none fits."""
  for kind, pattern in KINDS:
    if re.search(pattern, name.lower()):
      return kind
  return "other"


@dataclasses.dataclass
class Row:
  """One op (or kind, or program) summed over the trace: `total_ms` of its
  `count` executions, `share` of all ops' time (0..1)."""
  name: str
  count: int
  total_ms: float
  share: float = 0.0
  module: str = ""


def trace_files(path: str) -> list[str]:
  """The *.trace.json.gz files of the newest trace run under `path` (a file, a run
  directory, a profile/ directory or a workdir); FileNotFoundError if none."""
  if os.path.isfile(path):
    return [path]
  files = glob.glob(os.path.join(path, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {path!r}; train with "
                            "--config.profile.steps=a,b first (jax writes it to "
                            "<workdir>/profile/plugins/profile/<run>/)")
  newest = max({os.path.dirname(f) for f in files}, key=lambda d: (os.path.basename(d), d))
  return sorted(f for f in files if os.path.dirname(f) == newest)


def op_events(files):
  """(hlo_module, hlo_op, duration µs, run_id, start µs) of every executed XLA op."""
  for file in files:
    with gzip.open(file, "rt", encoding="utf-8") as f:
      events = json.load(f)["traceEvents"]
    for event in events:
      args = event.get("args") or {}
      if event.get("ph") == "X" and "hlo_op" in args:
        yield (args.get("hlo_module", ""), args["hlo_op"], float(event["dur"]),
               args.get("run_id", ""), float(event["ts"]))


def _rows(sums: dict, counts: dict, total_us: float, with_module: bool = False) -> list[Row]:
  rows = [Row(name=key[1] if with_module else key, count=counts[key], total_ms=us / 1e3,
              share=us / total_us if total_us else 0.0, module=key[0] if with_module else "")
          for key, us in sums.items()]
  return sorted(rows, key=lambda r: -r.total_ms)


def summarize(path: str, module: str = "") -> dict:
  """The trace under `path` summed by op: {'files', 'ops', 'kinds', 'modules'
  (Rows, slowest first; a module's count is its executions, one per step),
  'span_ms' ({module: first op start to last op end of one execution, ms, the
  mean}), 'total_ms' (all ops), 'window_ms' (first op start to last op end, host
  work between steps included), 'busy' (total_ms / window_ms)}. `module` keeps only that program's ops (e.g.
  'jit_train_step'). FileNotFoundError without a trace; ValueError without ops."""
  files = trace_files(path)
  ops, op_counts = collections.Counter(), collections.Counter()
  kinds, kind_counts = collections.Counter(), collections.Counter()
  modules, runs = collections.Counter(), collections.defaultdict(set)
  spans = collections.defaultdict(lambda: [float("inf"), float("-inf")])
  start, end = float("inf"), float("-inf")
  for mod, op, dur, run_id, ts in op_events(files):
    if module and mod != module:
      continue
    ops[mod, op] += dur
    op_counts[mod, op] += 1
    kind = kind_of(op)
    kinds[kind] += dur
    kind_counts[kind] += 1
    modules[mod] += dur
    runs[mod].add(run_id)
    span = spans[mod, run_id]
    span[:] = min(span[0], ts), max(span[1], ts + dur)
    start, end = min(start, ts), max(end, ts + dur)
  if not ops:
    raise ValueError(f"no XLA op in {files}" + (f" of module {module!r}" if module else ""))
  total = sum(ops.values())
  span_ms = collections.Counter()
  for (mod, _), (first, last) in spans.items():
    span_ms[mod] += (last - first) / 1e3 / len(runs[mod])
  return {"files": files, "ops": _rows(ops, op_counts, total, with_module=True),
          "kinds": _rows(kinds, kind_counts, total),
          "modules": _rows(modules, {m: len(r) for m, r in runs.items()}, total),
          "span_ms": dict(span_ms), "total_ms": total / 1e3, "window_ms": (end - start) / 1e3,
          "busy": total / (end - start) if end > start else 0.0}


def table(rows, top: int, what: str) -> list[str]:
  lines = [f"| {what} | count | total ms | share |", "|---|---:|---:|---:|"]
  for r in rows[:top]:
    name = f"{r.name} ({r.module})" if r.module and what == "op" else r.name
    lines.append(f"| {name} | {r.count} | {r.total_ms:,.2f} | {r.share:.1%} |")
  return lines


def format_summary(summary: dict, top: int = 10) -> str:
  """Markdown: the top ops, all kinds and programs, and the totals."""
  lines = [f"trace: {', '.join(summary['files'])}",
           f"op time {summary['total_ms']:,.1f} ms in a window of {summary['window_ms']:,.1f} "
           f"ms (busy {summary['busy']:.2f}: ops at once on several threads or devices)", ""]
  lines += table(summary["ops"], top, "op") + [""]
  lines += table(summary["kinds"], len(summary["kinds"]), "kind (by op name)") + [""]
  lines += table(summary["modules"], top, "program (count: executions)") + [""]
  lines += [f"{m}: {ms:,.2f} ms from its first op to its last, per execution"
            for m, ms in sorted(summary["span_ms"].items(), key=lambda kv: -kv[1])[:3]]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("path", help="workdir, its profile/, a trace run dir or a trace.json.gz")
  parser.add_argument("--top", type=int, default=10)
  parser.add_argument("--module", default="", help="only this program, e.g. jit_train_step")
  args = parser.parse_args(argv)
  try:
    summary = summarize(args.path, args.module)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"profile_summary: {e}") from None
  print(format_summary(summary, args.top))


if __name__ == "__main__":
  main()
