"""What ``train.py`` and ``eval.py`` share around their Hydra task: a user error ends as one line.

A user error (:func:`dsnet.guards.user_error`: a bad override, a value a constructor refuses while
Hydra instantiates it, one of our input checks) is printed as one line on stderr,
``train.py: error: model.width=-1 must be a positive number``, with exit status 1: no traceback,
no Hydra report, nothing on stdout. Anything else is a bug and keeps its traceback.

Hydra prints its own multi-line report of every exception unless ``HYDRA_FULL_ERROR=1``; :func:`run`
sets it so that the exception reaches us, and re-raises when the user had set it
(``HYDRA_FULL_ERROR=1 python train.py ...`` still shows the whole traceback). The user's own value
is kept in ``DSNET_HYDRA_FULL_ERROR``, so processes the run starts (DDP ranks re-run the command
line) see the user's choice, not ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

from dsnet.config import in_multirun
from dsnet.guards import user_error

USER_CHOICE = "DSNET_HYDRA_FULL_ERROR"


def run(main: Callable[[], object], prog: str) -> None:
    """Calls the ``@hydra.main`` function ``main``; a user error exits with ``<prog>: error: ...``.

    This catches what goes wrong before the task runs (Hydra composing the command line) and, in a
    multirun, the first failed job's error, which Hydra raises after the whole sweep.

    Args:
        main: the entry point's ``@hydra.main``-decorated function.
        prog: the name the error line starts with (``train.py``).
    """
    quiet_known_noise()
    os.environ.setdefault(USER_CHOICE, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its report: see above
    with one_line_errors(prog, in_job=False):
        main()


@contextlib.contextmanager
def one_line_errors(prog: str, in_job: bool = True) -> Iterator[None]:
    """Turns a user error raised inside into the line ``<prog>: error: <message>`` on stderr and exit 1.

    Used around the task inside the ``@hydra.main`` function too (``in_job=True``): Hydra writes
    "Error executing job with overrides: ..." for every exception a job raises, while an exit passes
    through it. In a multirun a job's error is left to Hydra, which records it and runs the next job.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001  (sorted into the user's errors and bugs right here)
        message = None if os.environ.get(USER_CHOICE) == "1" else user_error(err)
        if message is None or (in_job and in_multirun()):
            raise
        # Printed and flushed here: given to SystemExit as its message instead, the line went missing
        # when raised inside the Hydra job (the exit status stayed 1, the terminal showed nothing).
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_known_noise() -> None:
    """Silences what every run would print that says nothing about the user's run.

    - torch 2.14 deprecates ``torch.utils._pytree.LeafSpec``, which Lightning 2.6's own pytree helper
      still uses (``lightning/pytorch/utilities/_pytree.py``): Lightning's to change, not ours.
    - Lightning's tip to install ``litlogger``, on every Trainer: an advertisement.
    - Lightning's "`srun` is available but not used" on machines with SLURM installed: dsnet's SLURM
      path is the submitit launcher (``hydra/launcher=slurm``), which runs srun itself; a run
      started by hand on such a machine is meant to run right there.
    """
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
