"""Checkpoint files written atomically: a kill or a failure mid-save never leaves half a file.

Lightning's ``TorchCheckpointIO`` writes the serialised bytes straight into the target path (an
fsspec "transaction" is a no-op on local files), so a process killed mid-write leaves a truncated
``last.ckpt`` in place of the good one. Here the bytes go to a temporary file in the same directory,
are fsync'ed, and only then ``os.replace`` puts them in place: readers see the old file or the new
one, never a mix. Same directory because ``os.replace`` is atomic only within one file system.

Wiring: ``trainer.plugins`` (``configs/trainer/default.yaml``)::

    plugins:
      - _target_: dsnet.checkpoint_io.AtomicCheckpointIO
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is temp file + fsync + ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r}: not supported by {type(self).__name__}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, target)
        except BaseException:  # KeyboardInterrupt/SIGTERM too: never leave the temp file behind
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)  # the rename itself survives a power cut


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
