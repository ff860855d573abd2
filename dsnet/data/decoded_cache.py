"""Image files decoded once into uint8 squares, kept on disk and reused across runs and sweeps.

JPEG decoding is the bottleneck of ImageNet subsets on few cores (a few hundred images per second
per core). ``load_or_build`` decodes a list of (path, label) samples once into a uint8 array
(N, 3, S, S) saved as ``.npy`` beside its int64 labels and a small JSON manifest; later runs map the
file with ``np.load(mmap_mode="r")`` and skip the decode.

What a cache holds is fixed by its key: a SHA-256 over the decode recipe (``RECIPE``), the stored
side S and every sample's absolute path, byte size, modification time (ns) and label, in order. Any
change there (other classes or class order, another cap, another image size, an edited or added
file) gives another key, hence another file; an unchanged selection finds its file again. The
key's first 16 hex digits are in the file names: ``decoded_<S>px_<N>img_<key>.{npy,labels.npy,json}``.

Safety: the arrays are written under temporary names and ``os.replace``-d into place, the manifest
last, so a killed build never leaves a cache that a later run trusts (no manifest, no reuse). On
reuse, the manifest's key, the image file's byte size and the arrays' shapes are checked; a
truncated or otherwise damaged cache is rebuilt with a warning. Nothing is unpickled.

One decode for both paths: the uncached in-memory loader (``decode_images``) and the cache run the
same ``decode_transform`` in the same loop, so their arrays are equal bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

from dsnet.errors import InputError
from dsnet.guards import first_line

log = logging.getLogger(__name__)

# Bump when decode_transform (or the decoder behind it) changes: old caches then stop matching.
RECIPE = "pil-rgb/resize-shorter-side-bilinear-antialias/center-crop/v1"
FORMAT = 1  # manifest layout
DECODE_BATCH = 64  # images per worker batch: enough to amortise the IPC, small enough for a smooth bar


def decode_transform(size: int) -> v2.Compose:
    """PIL image -> uint8 (3, size, size): shorter side resized to ``size`` (antialiased), center crop."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


class ImageFileDataset(Dataset):
    """(path, label) pairs decoded with PIL (as RGB) and passed through ``transform``."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except OSError as err:  # PIL: truncated, damaged or not an image (UnidentifiedImageError is an OSError)
            reason = "no image format PIL knows" if isinstance(err, UnidentifiedImageError) else \
                first_line(err, type(err).__name__)  # UnidentifiedImageError's message is the file object's repr
            raise InputError(f"{path}: not a readable image ({reason}); remove or replace it") from None
        return self.transform(image), label


# --- decoding ----------------------------------------------------------------------------------


def decode_into(out: np.ndarray, samples: Sequence[tuple[str, int]], size: int, num_workers: int) -> float:
    """Decodes ``samples`` into ``out`` (N, 3, size, size) uint8 with a progress bar; returns seconds."""
    loader = DataLoader(ImageFileDataset(samples, decode_transform(size)), batch_size=DECODE_BATCH,
                        num_workers=num_workers)
    columns = (TextColumn(f"decoding {len(samples)} images to {size} px"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    start = time.perf_counter()
    # On stderr: stdout may be a report (scripts/bench_data.py); transient: the log line says the rest.
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("decode", total=len(samples))
        row = 0
        for images, _ in loader:
            out[row:row + len(images)] = images.numpy()
            row += len(images)
            progress.advance(task, len(images))
    assert row == len(out), f"decoded {row} images into an array of {len(out)}"
    return time.perf_counter() - start


def decode_images(samples: Sequence[tuple[str, int]], size: int, num_workers: int) -> np.ndarray:
    """``samples`` decoded in memory, without a cache: uint8 (N, 3, size, size)."""
    images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    seconds = decode_into(images, samples, size, num_workers)
    log.info("decoded %d images to %d px in %.1f s (%.0f images/s, %d workers); set a cache_dir to decode "
             "them once for all runs", len(samples), size, seconds, len(samples) / max(seconds, 1e-9), num_workers)
    return images


# --- the cache ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedCache:
    """A decoded cache on disk, opened read-only.

    Attributes:
        images: uint8 (N, 3, S, S), memory-mapped from ``path`` (read-only).
        labels: int64 (N,).
        path: the ``.npy`` file of the images.
        manifest: the JSON manifest beside it (key, shape, byte size, build time and rate, ...).
        built: True when this call decoded the images, False when it reused an existing cache.
    """

    images: np.ndarray
    labels: np.ndarray
    path: Path
    manifest: dict
    built: bool

    @property
    def size_mb(self) -> float:
        return self.manifest["images_bytes"] / 1e6


def cache_key(samples: Sequence[tuple[str, int]], size: int) -> str:
    """Hex SHA-256 of everything that decides the cache's content (see the module docstring)."""
    digest = hashlib.sha256(f"{RECIPE}\n{size}\n".encode())
    for path, label in samples:
        path = os.path.abspath(path)
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return digest.hexdigest()


def cache_paths(cache_dir: Path, size: int, num_images: int, key: str) -> tuple[Path, Path, Path]:
    """(images .npy, labels .npy, manifest .json) of one cache."""
    stem = f"decoded_{size}px_{num_images}img_{key[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.labels.npy", cache_dir / f"{stem}.json"


def load_or_build(
    samples: Sequence[tuple[str, int]], size: int, cache_dir: str | Path, *, num_workers: int = 0
) -> DecodedCache:
    """The decoded cache of ``samples`` at ``size`` px in ``cache_dir``: reused if valid, else built.

    Logs (INFO) the cache's location, size in MB and number of images, and whether it was built
    (with the decode rate) or reused.

    Raises:
        ValueError: ``samples`` is empty, or ``cache_dir`` cannot be created or written (only checked
            when a build is needed, so a read-only directory of finished caches works).
    """
    if not samples:
        raise ValueError("no images to cache: the sample list is empty")
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(samples, size)
    images_path, labels_path, manifest_path = cache_paths(cache_dir, size, len(samples), key)
    cache = _open(images_path, labels_path, manifest_path, key, (len(samples), 3, size, size))
    if cache is None:
        _check_writable(cache_dir)
        _build(samples, size, num_workers, key, images_path, labels_path, manifest_path)
        cache = _open(images_path, labels_path, manifest_path, key, (len(samples), 3, size, size), built=True)
        assert cache is not None, f"{images_path} failed its checks right after being built"
    m = cache.manifest
    how = (f"built: {m['build_s']:.1f} s, {m['images_per_s']:.0f} images/s, {m['num_workers']} workers" if cache.built
           else f"reused, built {m['built_at']}")
    log.info("decoded cache %s: %.1f MB, %d images of 3x%dx%d px (%s)", images_path, cache.size_mb,
             m["num_images"], size, size, how)
    return cache


def _open(images_path: Path, labels_path: Path, manifest_path: Path, key: str, shape: tuple[int, ...],
          built: bool = False) -> DecodedCache | None:
    """The cache if its manifest matches and its files pass the checks; None (with a warning when
    files are damaged) otherwise."""
    if not manifest_path.is_file():
        return None  # never finished (or never started): nothing to trust
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            raise ValueError(f"manifest key/format differ from {key[:16]}/{FORMAT}")
        if (actual := images_path.stat().st_size) != manifest["images_bytes"]:
            raise ValueError(f"{images_path.name} has {actual} bytes, the manifest says {manifest['images_bytes']}")
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
        if images.shape != shape or images.dtype != np.uint8 or labels.shape != shape[:1]:
            raise ValueError(f"arrays are {images.dtype} {images.shape} and labels {labels.shape}, expected "
                             f"uint8 {shape} and ({shape[0]},)")
    except (OSError, ValueError, KeyError) as err:  # np.load raises ValueError/OSError on damaged files
        log.warning("decoded cache %s is damaged (%s); rebuilding it", images_path, err)
        return None
    return DecodedCache(images, labels, images_path, manifest, built)


def _check_writable(cache_dir: Path) -> None:
    """One-line ValueError naming ``cache_dir`` when a cache cannot be written there."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as err:
        raise ValueError(f"cache_dir={str(cache_dir)!r} cannot be created or written: {err.strerror or err}; "
                         f"give a writable directory, or cache_dir=null to decode without a cache") from None


def _build(samples: Sequence[tuple[str, int]], size: int, num_workers: int, key: str,
           images_path: Path, labels_path: Path, manifest_path: Path) -> None:
    """Decodes into temporary files and moves them into place: images, labels, then the manifest."""
    shape = (len(samples), 3, size, size)
    manifest_path.unlink(missing_ok=True)  # a damaged cache stops being trusted before its files change
    temps = []
    for final in (images_path, labels_path, manifest_path):
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f"{final.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(name, 0o644)  # mkstemp makes it 0600: a cache shared by a team must be readable by all
        temps.append(Path(name))
    try:
        images = np.lib.format.open_memmap(temps[0], mode="w+", dtype=np.uint8, shape=shape)
        seconds = decode_into(images, samples, size, num_workers)
        images.flush()
        del images  # unmaps: the file is complete before it is renamed
        with open(temps[1], "wb") as f:
            np.save(f, np.array([label for _, label in samples], dtype=np.int64), allow_pickle=False)
        manifest = {
            "format": FORMAT,
            "key": key,
            "recipe": RECIPE,
            "size_px": size,
            "num_images": len(samples),
            "shape": list(shape),
            "images_bytes": temps[0].stat().st_size,
            "first_file": os.path.abspath(samples[0][0]),
            "last_file": os.path.abspath(samples[-1][0]),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_s": round(seconds, 3),
            "images_per_s": round(len(samples) / max(seconds, 1e-9), 1),
            "num_workers": num_workers,
        }
        temps[2].write_text(json.dumps(manifest, indent=2) + "\n")
        for temp, final in zip(temps, (images_path, labels_path, manifest_path)):
            os.replace(temp, final)  # the manifest goes last: until it lands, nothing is trusted
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
