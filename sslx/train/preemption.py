"""Preemption: a SIGTERM (what SLURM, Kubernetes and TPU / GPU cloud schedulers send before they
evict a job) makes the run save a checkpoint at the next step and exit cleanly.

One process: a Python SIGTERM handler sets a flag that the loop reads after every step.

Several processes (`jax.distributed`): every process must stop at the same step, or the ones
still training hang in a collective while the others save. JAX's preemption service does that:
its own SIGTERM handler tells the coordination service, which picks one step past the furthest
process; `multihost_utils.reached_preemption_sync_point(step)` is True on every process at that
step. Only the process that received the signal needs it.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:
  """`reached(step)`: True on the step at which this run should save and stop. A context
  manager: the SIGTERM handler is installed on entry and the previous one given back on exit."""

  def __init__(self):
    self._multi_controller = jax.distributed.is_initialized()
    self._notice = threading.Event()
    self._installed, self._previous_handler = False, None

  def __enter__(self):
    # signal.signal only works in the main thread; a run started elsewhere (a notebook's
    # background thread) is then not preemptible by SIGTERM, which keeps its default action.
    if (not self._multi_controller
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def __exit__(self, *exc_info):
    if self._installed:
      # None: the previous handler was installed from C; the default is the closest we can do.
      signal.signal(signal.SIGTERM, self._previous_handler
                    if self._previous_handler is not None else signal.SIG_DFL)
      self._installed = False

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
    self._notice.set()

  def reached(self, step: int) -> bool:
    """Called once per step, with the same steps on every process (the sync protocol needs it)."""
    if self._multi_controller:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as e:
        raise RuntimeError(
            f"{e} (sslx stops a multi-process run on SIGTERM through JAX's preemption service; "
            "do not set jax_enable_preemption_service=False)") from None
    return self._notice.is_set()
