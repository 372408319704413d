"""What each XLA op of a jax.profiler trace is, from the HLO that jax stores in
the trace's <host>.xplane.pb: its opcodes (those of a fusion's computations
included) and its source (the jax op_name, e.g.
`jit(train_step)/jvp(LM)/.../block_1/mlp/wo/dot_general`).

The XSpace protobuf is read with a small wire-format reader (no TensorBoard,
XProf or generated protobuf classes, none of which this environment installs).
Field numbers, from tsl/profiler/protobuf/xplane.proto and xla/service/hlo.proto:
XSpace.planes=1; XPlane.name=2, event_metadata=4 (map: key=1, value=2);
XEventMetadata.name=2, stats=5; XStat.metadata_id=1, bytes_value=6;
XPlane.stat_metadata=5 (map -> XStatMetadata.name=2, the stat 'Hlo Proto');
HloProto.hlo_module=1; HloModuleProto.name=1, computations=3;
HloComputationProto.name=1, instructions=2, id=5; HloInstructionProto.name=1,
opcode=2, metadata=7 (OpMetadata.op_name=2), called_computation_ids=38.
"""
import dataclasses

METADATA_PLANE = b"/host:metadata"
HLO_STAT = b"Hlo Proto"


def _varint(data: bytes, i: int):
  value = shift = 0
  while True:
    byte = data[i]
    i += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, i


def fields(data: bytes):
  """(field number, value) of one protobuf message: ints for varints, bytes for
  length-delimited fields (sub-messages, strings, packed lists) and fixed ones."""
  i = 0
  while i < len(data):
    key, i = _varint(data, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(data, i)
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      value, i = data[i:i + size], i + size
    elif wire == 2:
      size, i = _varint(data, i)
      value, i = data[i:i + size], i + size
    else:
      raise ValueError(f"protobuf wire type {wire} is not read here")
    yield number, value


def _all(data: bytes, number: int) -> list:
  return [v for n, v in fields(data) if n == number]


def _first(data: bytes, number: int, default=b""):
  values = _all(data, number)
  return values[0] if values else default


def _packed(data: bytes) -> list[int]:
  values, i = [], 0
  while i < len(data):
    value, i = _varint(data, i)
    values.append(value)
  return values


@dataclasses.dataclass(frozen=True)
class OpInfo:
  """One HLO instruction: its opcode, the opcodes inside it (a fusion's, nested
  fusions included; just its own otherwise) and its jax source op_name."""
  opcode: str
  opcodes: frozenset
  source: str


def _module_ops(module: bytes) -> dict:
  """{instruction name: OpInfo} of one HloModuleProto."""
  computations = {}   # id -> [(name, opcode, op_name, called ids)]
  for comp in _all(module, 3):
    computations[_first(comp, 5, 0)] = [
        (_first(ins, 1).decode(), _first(ins, 2).decode(),
         _first(_first(ins, 7), 2).decode(errors="replace"),
         [c for packed in _all(ins, 38) for c in
          (_packed(packed) if isinstance(packed, bytes) else [packed])])
        for ins in _all(comp, 2)]

  def inside(ids, seen):
    out = set()
    for cid in ids:
      if cid in seen or cid not in computations:
        continue
      seen.add(cid)
      for _, opcode, _, called in computations[cid]:
        out |= {opcode} | inside(called, seen)
    return out

  return {name: OpInfo(opcode, frozenset({opcode} | inside(called, set())), source)
          for instructions in computations.values()
          for name, opcode, source, called in instructions}


def hlo_ops(path: str) -> dict:
  """{hlo_module name: {op name: OpInfo}} of every program whose HLO the
  xplane.pb at `path` holds ({} if none); a name seen twice keeps the last."""
  with open(path, "rb") as f:
    space = f.read()
  out = {}
  for plane in _all(space, 1):
    if _first(plane, 2) != METADATA_PLANE:
      continue
    stat_ids = {_first(entry_value, 1, 0) for entry in _all(plane, 5)
                for entry_value in [_first(entry, 2)] if _first(entry_value, 2) == HLO_STAT}
    for entry in _all(plane, 4):
      metadata = _first(entry, 2)
      for stat in _all(metadata, 5):
        if _first(stat, 1, -1) in stat_ids:
          module = _first(_first(stat, 6), 1)
          out[_first(module, 1).decode()] = _module_ops(module)
  return out
