"""Test set-up: 8 fake CPU devices and XLA flags that compile fast, set before
jax is imported anywhere; under xdist, whole modules per worker."""
import os

import pytest

# Compilation, not execution, is most of the suite's time (XLA's CPU backend
# compiling small programs). Two flags compile the same XLA programs in about a
# third of the CPU time of XLA's defaults: LLVM at -O0, and XLA:CPU's elemental IR
# emitters instead of its newer fusion emitters (`use_fusion_emitters=false`).
# Results differ from the defaults' in the last bits only (rounding), and every
# comparison in the suite is between runs made under the same flags, or within a
# tolerance. Subprocesses (launch.py, the multihost workers) inherit the flags.
# A flag already in XLA_FLAGS wins; the suite at XLA's defaults:
#   XLA_FLAGS="--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true"
_XLA_FLAGS = ("--xla_force_host_platform_device_count=8",   # unless given with this value
              "--xla_backend_optimization_level=0",          # unless given with any value
              "--xla_cpu_use_fusion_emitters=false")
for _flag in _XLA_FLAGS:
  _given = _flag if "device_count" in _flag else _flag.split("=")[0] + "="
  if _given not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Modules by CPU time, costliest first (measured; tests/README.md, "Running the
# suite"). Under `pytest -n N` each module runs whole on one worker, so its
# module-scoped fixtures (trained runs, compiled models) are made once, and the
# costliest start first, so that no worker is left with a long module at the end.
# Modules not listed follow, in file order.
COSTLIEST_FIRST = (
    "test_runner.py", "test_jobs.py", "test_decode.py", "test_conditioned_run.py",
    "test_hierarchy.py", "test_compute.py", "test_resume.py", "test_launch.py",
    "test_sharding.py", "test_distill.py",
    "test_cross_attention.py", "test_loop_policies.py", "test_packing.py", "test_beam.py",
    "test_flops.py", "test_profile.py", "test_encoders.py", "test_conditioned_decode.py",
    "test_model.py", "test_multihost.py", "test_exit_status.py",
)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n N` without --dist: modules as units of work (xdist's loadscope), in the
  order the workers collected them (see pytest_collection_modifyitems)."""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling
  config.option.loadscopereorder = False   # keep the collection's order

  class WholeModules(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return nodeid.split("::", 1)[0]

  return WholeModules(config, log)


def pytest_collection_modifyitems(config, items):
  """On xdist workers: modules in COSTLIEST_FIRST order (tests keep their order
  within a module); a plain run keeps pytest's order."""
  if not hasattr(config, "workerinput"):
    return
  rank = {name: i for i, name in enumerate(COSTLIEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
