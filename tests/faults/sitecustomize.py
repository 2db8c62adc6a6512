"""Kills a training process at a chosen iteration, for the tests that resume killed runs; never on a real run.

Python imports `sitecustomize` at start-up from the first folder of sys.path that holds one; a test puts this
folder first on PYTHONPATH (tests.faults.killed_after) with HARNESS_FAULT_KILL_AT=N. The training loop knows
nothing of it: when `harness.core.train` is imported, `next_batch` (the one call the loop makes at the start of
every iteration) is wrapped so that the process SIGKILLs itself before drawing the batch of iteration N + 1,
that is after iteration N and, where N is an evaluation point, after its checkpoint. Spawned `--jobs` workers
and tune workers inherit the environment and import this too. A `next_batch` that is renamed or gone makes the
import fail loudly, so the tests fail rather than never kill.
"""

import os

KILL_AT = int(os.environ.get("HARNESS_FAULT_KILL_AT") or 0)


def _wrap(train) -> None:
    import signal

    next_batch = train.next_batch

    def next_batch_or_die(st, *args, **kwargs):
        if st.it == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return next_batch(st, *args, **kwargs)

    train.next_batch = next_batch_or_die


def _install() -> None:
    import importlib.abc
    import importlib.util
    import sys

    class WrapOnImport(importlib.abc.MetaPathFinder):
        """Finds harness.core.train as usual and wraps it once it has run, so that nothing is imported early."""

        def find_spec(self, name, path, target=None):
            if name != "harness.core.train":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                _wrap(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, WrapOnImport())


if KILL_AT:
    _install()
