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

Each op's kind (matmul, elementwise, reduce, data movement, collective) and
its jax source (e.g. `bwd/level_0/block_1/mlp/wo/dot_general`) come from the
HLO that jax also stores in the xplane.pb (benchmarks/xplane_hlo.py reads it):
XLA's names alone do not say, e.g. on CPU `ynn_fusion.N` is a call into the
YNNPACK library that may hold a dot or a reduction. Without that HLO the kind
is guessed from the name (`kind_of`; GPU kernels: gemm, cublas, cutlass). An
op runs once per device per step: with 8 devices, count is 8 x steps. On a CPU,
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

from benchmarks import xplane_hlo

# An op's kind from its opcodes (the HLO in the xplane.pb; first match) or, without
# them, from its name (lower case; e.g. GPU kernels: gemm, cublas, cutlass).
MOVES = {"copy", "transpose", "concatenate", "slice", "dynamic-slice", "dynamic-update-slice",
         "pad", "bitcast", "reshape", "broadcast", "parameter", "constant", "tuple",
         "get-tuple-element", "iota", "gather", "scatter"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-gather-start", "collective-permute-start"}
KINDS = (("matmul", lambda ops: bool(ops & {"dot", "convolution"}),
          r"^dot|gemm|cublas|matmul|cutlass|xmma|^convolution"),
         ("collective", lambda ops: bool(ops & COLLECTIVES),
          r"all-reduce|all-gather|reduce-scatter|all-to-all|collective"),
         ("reduce", lambda ops: bool(ops & {"reduce", "reduce-window", "sort"}), r"^reduce"),
         ("data movement", lambda ops: ops <= MOVES,
          r"^(copy|transpose|bitcast|concatenate|slice|dynamic|pad)"),
         ("elementwise", lambda ops: True, r"fusion$|fusion\.\d+$"))
NAMED_ONLY = "library call (ynn: dots and more)"   # ynn_fusion.N without its HLO
PASSES = {"jvp": "fwd", "transpose": "bwd"}   # jax's names of the forward and backward pass


def kind_of(name: str, opcodes=None) -> str:
  """An op's kind: from `opcodes` (OpInfo.opcodes) when given, else from its XLA
  name ('dot.12' -> 'matmul'); 'other' when no name pattern fits."""
  if opcodes:
    return next(kind for kind, test, _ in KINDS if test(set(opcodes)))
  if name.lower().startswith("ynn_fusion"):
    return NAMED_ONLY
  return next((kind for kind, _, pattern in KINDS if re.search(pattern, name.lower())), "other")


def short_source(op_name: str) -> str:
  """A jax op_name without the program and the model's call path, the pass as
  fwd/bwd: 'jit(train_step)/transpose(jvp(LM))/LM.forward/LM._run/level_0/block_1/
  mlp/wo/dot_general' -> 'bwd/level_0/block_1/mlp/wo/dot_general'."""
  parts = [re.sub(r"\(.*\)$", "", re.sub(r"^jit\((.+)\)$", r"\1", p))   # jit(f) -> f
           for p in op_name.split("/")[1:] if not p.startswith(("LM.", "vmap("))]
  return "/".join(PASSES.get(p, p) for p in parts)


def part_of(source: str) -> str:
  """The model part an op belongs to, from its short source: 'level_0/attn' for
  'bwd/level_0/block_1/attn/dot_general', else its first name after the pass
  ('unembed', 'optimizer' ...); '(no source)' for ops the HLO does not place."""
  parts = source.split("/")[1:] if source.split("/")[0] in PASSES.values() else \
      source.split("/")
  for i, part in enumerate(parts[1:-1], start=1):
    if re.fullmatch(r"block_\d+", part):
      return f"{parts[i - 1]}/{parts[i + 1]}"
  return parts[0] if parts and parts[0] else "(no source)"


@dataclasses.dataclass
class Row:
  """One op (or kind, or program) summed over the trace: `total_ms` of its
  `count` executions, `share` of all ops' time (0..1); an op's program
  (`module`), `kind` and jax `source` (short_source; "" without the HLO)."""
  name: str
  count: int
  total_ms: float
  share: float = 0.0
  module: str = ""
  kind: str = ""
  source: str = ""


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


def hlo_infos(files) -> dict:
  """{(hlo_module, op): xplane_hlo.OpInfo} from the xplane.pb beside each trace file
  ({} where there is none)."""
  out = {}
  for file in files:
    xplane = file[:-len(".trace.json.gz")] + ".xplane.pb"
    if os.path.exists(xplane):
      for mod, ops in xplane_hlo.hlo_ops(xplane).items():
        out.update({(mod, op): info for op, info in ops.items()})
  return out


def _rows(sums: dict, counts: dict, total_us: float, make=lambda key: {"name": key}):
  rows = [Row(count=counts[key], total_ms=us / 1e3, share=us / total_us, **make(key))
          for key, us in sums.items()]
  return sorted(rows, key=lambda r: -r.total_ms)


def summarize(path: str, module: str = "") -> dict:
  """The trace under `path` summed by op: {'files', 'ops', 'kinds', 'parts'
  (part_of), 'modules' (Rows, slowest first; a module's count is its executions, one per step),
  'span_ms' ({module: first op start to last op end of one execution, ms, the
  mean}), 'total_ms' (all ops), 'window_ms' (first op start to last op end, host
  work between steps included), 'busy' (total_ms / window_ms)}. `module` keeps
  only that program's ops (e.g. 'jit_train_step'). Kinds come from the HLO in the
  xplane.pb where it has the op, else from the op's name. FileNotFoundError
  without a trace; ValueError without ops."""
  files = trace_files(path)
  infos = hlo_infos(files)
  sums = {what: collections.Counter() for what in ("ops", "kinds", "parts", "modules")}
  counts = {what: collections.Counter() for what in ("ops", "kinds", "parts")}
  runs = collections.defaultdict(set)
  spans = collections.defaultdict(lambda: [float("inf"), float("-inf")])
  start, end = float("inf"), float("-inf")
  for mod, op, dur, run_id, ts in op_events(files):
    if module and mod != module:
      continue
    info = infos.get((mod, op))
    kind = kind_of(op, info.opcodes if info else None)
    part = part_of(short_source(info.source)) if info else "(no source)"
    for what, key in (("ops", (mod, op)), ("kinds", kind), ("parts", part), ("modules", mod)):
      sums[what][key] += dur
      counts.get(what, collections.Counter())[key] += 1
    runs[mod].add(run_id)
    span = spans[mod, run_id]
    span[:] = min(span[0], ts), max(span[1], ts + dur)
    start, end = min(start, ts), max(end, ts + dur)
  if not sums["ops"]:
    raise ValueError(f"no XLA op in {files}" + (f" of module {module!r}" if module else ""))
  total = sum(sums["ops"].values())
  span_ms = collections.Counter()
  for (mod, _), (first, last) in spans.items():
    span_ms[mod] += (last - first) / 1e3 / len(runs[mod])

  def op_row(key):
    info = infos.get(key)
    return {"name": key[1], "module": key[0], "kind": kind_of(key[1], info and info.opcodes),
            "source": short_source(info.source) if info else ""}
  return {"files": files, "ops": _rows(sums["ops"], counts["ops"], total, op_row),
          "kinds": _rows(sums["kinds"], counts["kinds"], total),
          "parts": _rows(sums["parts"], counts["parts"], total),
          "modules": _rows(sums["modules"], {m: len(r) for m, r in runs.items()}, total),
          "span_ms": dict(span_ms), "total_ms": total / 1e3, "window_ms": (end - start) / 1e3,
          "busy": total / (end - start) if end > start else 0.0}


def table(rows, top: int, what: str) -> list[str]:
  ops = what == "op"
  lines = [f"| {what} |" + (" kind | source |" if ops else "") + " count | total ms | share |",
           "|---|" + ("---|---|" if ops else "") + "---:|---:|---:|"]
  for r in rows[:top]:
    name = f"{r.name} ({r.module}) | {r.kind} | {r.source}" if ops else r.name
    lines.append(f"| {name} | {r.count} | {r.total_ms:,.2f} | {r.share:.1%} |")
  return lines


def format_summary(summary: dict, top: int = 10) -> str:
  """Markdown: the top ops, all kinds and programs, and the totals."""
  lines = [f"trace: {', '.join(summary['files'])}",
           f"op time {summary['total_ms']:,.1f} ms in a window of {summary['window_ms']:,.1f} "
           f"ms (busy {summary['busy']:.2f}: ops at once on several threads or devices)", ""]
  lines += table(summary["ops"], top, "op") + [""]
  lines += table(summary["kinds"], len(summary["kinds"]), "kind") + [""]
  lines += table(summary["parts"], top, "part of the model") + [""]
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
