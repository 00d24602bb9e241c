"""Joining a multi-process run: every entry point (train, evaluate, sample) calls `initialize` first."""

from __future__ import annotations

import os

import jax


def initialize(multihost: bool = False) -> None:
  """Joins a multi-process run (jax.distributed.initialize) before any device is touched.

  JAX_COORDINATOR_ADDRESS set (launch/local.py, or by hand): the process id and count come from JAX_PROCESS_ID and
  JAX_NUM_PROCESSES, or, where those are unset, from the cluster jax detects. Otherwise `multihost` (--multihost)
  lets jax detect everything: Cloud TPU pods, SLURM, Open MPI, Kubernetes. Neither: a single-process run.
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(address, num_processes=None if count is None else int(count),
                               process_id=None if index is None else int(index))
  elif multihost:
    jax.distributed.initialize()
