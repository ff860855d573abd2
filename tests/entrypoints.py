"""Run ``train.py``, ``eval.py`` and ``python -m dsnet.report`` as a user does, without paying the
interpreter and import start-up (about 5 s of CPU each here) for every one of the suite's runs.

A fork server (``multiprocessing``'s "forkserver") imports torch, Lightning, Hydra and dsnet once;
each run is a fresh process forked from it: its own pid, working directory, environment, argv and
exit status, with stdout and stderr both going into one file, as a terminal shows them. The server
has run no torch operation, so the forks start from a state that has no threads to lose.

What a fork cannot show stays a real subprocess (``conftest.run_cli``): signals sent by the test,
and DDP, whose second rank re-runs the command line as a new interpreter anyway.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import runpy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["torch", "torchvision", "lightning", "hydra", "timm", "dsnet.task", "dsnet.evaluate", "dsnet.report",
           "dsnet.cli"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


@dataclasses.dataclass(frozen=True)
class Result:
    """What the user saw: the exit status and the terminal's text (stdout and stderr together)."""

    returncode: int
    output: str

    @property
    def lines(self) -> list[str]:
        """The non-blank lines of the output."""
        return [line for line in self.output.splitlines() if line.strip()]


def _child(argv: list[str], cwd: str, env: dict[str, str], output: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115  (the process's own streams)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (an uncaught exception: print it and exit 1, as Python does)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run(*argv: str, cwd: Path | str = ROOT, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """``python <argv>`` (a script path, or ``-m module``) in a process forked from the server.

    Args:
        argv: what follows ``python`` on the command line; a script is taken from the repository root.
        cwd: the working directory.
        env: variables added to the test process's environment (``OMP_NUM_THREADS`` defaults to 1).
        timeout: seconds before the run is killed and the test fails.
    """
    args = list(argv)
    if args[0] != "-m":
        args[0] = str(ROOT / args[0])
    environment = {"OMP_NUM_THREADS": "1", **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
                   "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.NamedTemporaryFile("r", suffix=".out") as out:
        process = _context.Process(target=_child, args=(args, str(cwd), environment, out.name))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise TimeoutError(f"{' '.join(argv)} still ran after {timeout} s; output:\n{Path(out.name).read_text()}")
        return Result(process.exitcode, Path(out.name).read_text())
