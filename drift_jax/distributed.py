"""``dj.distributed``: run drift_jax in several processes (hosts or GPUs) with
``jax.distributed``.

JAX is the distributed engine: one process per host (or per GPU), all joined to one
coordinator, each driving its own devices. drift_jax's batch work runs unchanged inside
such a run: ``dj.simulate`` / simulators, ``dj.monte_carlo``, the market-making backtest
and ``dj.fit_batch`` split every chunk of paths (instruments) into one contiguous block per
process, each process computes its block on its own devices (path ``i`` still from
``fold_in(key, i)``), and the per-path results of all blocks are gathered to every
process, so every process returns the same report and the numbers do not depend on the
number of processes. Reports are saved and progress bars drawn by process 0 only.

How to launch:

- **A cluster** (SLURM, Open MPI / MPI, Kubernetes, Cloud TPU): call
  ``dj.distributed.initialize()`` first thing in the script; JAX detects the cluster
  (coordinator, process count and id) from the scheduler's environment. Start it as the
  scheduler does, e.g. ``srun -N 2 --ntasks-per-node 8 --gpus-per-task 1 python run.py``.
- **Explicitly**: ``dj.distributed.initialize("host0:1234", num_processes=2,
  process_id=i)`` in process ``i``.
- **One machine, for testing** (CPU processes with gloo collectives on localhost)::

      python -m drift_jax.launch -n 2 script.py [script arguments]

  starts 2 processes that each join the run before executing ``script.py``; the script
  needs no ``initialize`` call (``dj.distributed.initialize()`` there does nothing). See
  ``python -m drift_jax.launch --help`` (devices per process, time limit).

Example:
    >>> import drift_jax as dj
    >>> dj.distributed.process_count(), dj.distributed.is_main_process()
    (1, True)
"""

from __future__ import annotations

import os

import jax

from ._core import validate as v
from ._core.multihost import ProcessGroupError, is_main_process, process_count

__all__ = [
    "ENV_COORDINATOR",
    "ENV_HEARTBEAT",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "ProcessGroupError",
    "initialize",
    "is_initialized",
    "is_main_process",
    "process_count",
    "process_index",
]

#: Environment variables ``python -m drift_jax.launch`` sets for each process it starts;
#: ``initialize()`` reads them when its arguments are left ``None``.
ENV_COORDINATOR = "DRIFT_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "DRIFT_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DRIFT_JAX_PROCESS_ID"
ENV_HEARTBEAT = "DRIFT_JAX_HEARTBEAT_S"


def process_index() -> int:
    """This process's index in the run (0 when not distributed)."""
    return jax.process_index()


def is_initialized() -> bool:
    """Whether this process has joined a ``jax.distributed`` run."""
    return bool(jax.distributed.is_initialized())


def _cluster_detected() -> bool:
    """Whether JAX's auto-detection would find a cluster (SLURM, MPI, Kubernetes, TPU)."""
    try:
        from jax._src import clusters  # JAX has no public call for this

        kinds = clusters.ClusterEnv._cluster_types
        # Opt-in kinds (mpi4py) are only used when asked for by name, as in JAX.
        auto = [c for c in kinds if not getattr(c, "opt_in_only_method", False)]
        return any(c.is_env_present() for c in auto)
    except Exception:  # another JAX layout: let jax.distributed.initialize decide
        return True


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
    cpu_collectives: str | None = "gloo",
    heartbeat_timeout_seconds: int | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Join a ``jax.distributed`` run; call it before any other JAX work.

    Arguments:
        coordinator_address: ``"host:port"`` of process 0's coordinator. ``None``: the
            launcher's ``DRIFT_JAX_COORDINATOR``, else JAX's cluster auto-detection
            (SLURM, Open MPI, MPI, Kubernetes, TPU).
        num_processes, process_id: the run's size and this process's index (``None``: the
            launcher's environment, else auto-detected).
        local_device_ids: the local devices this process drives (e.g. one GPU per
            process); ``None``: all of them.
        cpu_collectives: the CPU backend's cross-process collectives (``"gloo"``, the one
            that works without MPI; ``"mpi"``; ``None`` leaves JAX's setting). It sets
            JAX's ``jax_cpu_collectives_implementation`` option: that is what this call
            is for, and nothing is set on import.
        heartbeat_timeout_seconds: how long the coordinator waits for a silent process
            before failing the run (``None``: ``DRIFT_JAX_HEARTBEAT_S`` or JAX's 100 s).
        initialization_timeout: seconds to wait for every process to join.

    Calling it again in a process that has joined (e.g. in a script started by
    ``python -m drift_jax.launch``) does nothing, and so does calling it without
    arguments outside a cluster and outside the launcher: the script then runs as one
    process, so the same script runs on a laptop and on a cluster.
    """
    if is_initialized():
        return
    env = os.environ
    given = (coordinator_address, num_processes, process_id)
    launched = any(env.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))
    if all(x is None for x in given) and not launched and not _cluster_detected():
        return
    if coordinator_address is None:
        coordinator_address = env.get(ENV_COORDINATOR)
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    if heartbeat_timeout_seconds is None and env.get(ENV_HEARTBEAT):
        heartbeat_timeout_seconds = int(env[ENV_HEARTBEAT])
    if num_processes is not None:
        num_processes = v.positive_int("num_processes", num_processes)
    if process_id is not None:
        process_id = v.nonnegative_int("process_id", process_id)
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(
                f"`process_id` must be in [0, num_processes) = [0, {num_processes}), got "
                f"process_id={process_id}."
            )
    if cpu_collectives is not None:
        v.one_of("cpu_collectives", cpu_collectives, ("gloo", "mpi"))
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {"initialization_timeout": int(initialization_timeout)}
    if heartbeat_timeout_seconds is not None:
        kwargs["heartbeat_timeout_seconds"] = v.positive_int(
            "heartbeat_timeout_seconds", heartbeat_timeout_seconds
        )
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        **kwargs,
    )
