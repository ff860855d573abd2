"""The decoded cache of ImageNet subsets: exact arrays, reuse without decoding, keys, damage, errors.

Every test writes a real ImageFolder tree of PNG and JPEG files of varied sizes and decodes it with
the real PIL/torchvision path; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import write_image_tree
from dsnet.data import ImageNetSubsetDataModule, load_or_build
from dsnet.data.decoded_cache import cache_key
from dsnet.data.imagenet_subset import list_images, resolve_classes

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
CACHE_LOGGER = "dsnet.data.decoded_cache"


@pytest.fixture
def tree(tmp_path) -> Path:
    write_image_tree(tmp_path / "imagenet", {"n01": 6, "n02": 5, "n03": 4})
    return tmp_path / "imagenet"


def samples_of(tree: Path, classes=None, max_per_class=None) -> list[tuple[str, int]]:
    return list_images(tree / "train", resolve_classes(tree, classes), max_per_class)


def memory_module(tree: Path, **options) -> ImageNetSubsetDataModule:
    defaults = {"loader": "memory", "image_size": 16, "val_size": 3, "batch_size": 4, "num_workers": 0}
    return ImageNetSubsetDataModule(tree, **{**defaults, **options})


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.glob("decoded_*.npy") if not p.name.endswith(".labels.npy"))


# --- exactness ---------------------------------------------------------------------------------


def test_cached_splits_equal_the_uncached_memory_path_exactly(tree, tmp_path):
    plain = memory_module(tree)
    cached = memory_module(tree, cache_dir=tmp_path / "cache", num_workers=1)  # decoded in a worker process
    plain.setup(), cached.setup()
    for split, count in (("train", 12), ("val", 3), ("test", 15)):
        a, b = plain.dataset(split), cached.dataset(split)
        assert a.images.shape == (count, 3, 18, 18) and a.images.dtype == torch.uint8  # floor(16 / 0.875)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # One cache per split's file list: train/ (train + val rows, 15 images) and val/ (the test split).
    assert cache_files(tmp_path / "cache")[0].startswith("decoded_18px_15img_")
    assert len(cache_files(tmp_path / "cache")) == 2


def test_training_batches_through_the_cache_equal_those_without(tree, tmp_path):
    plain, cached = memory_module(tree, seed=3), memory_module(tree, seed=3, cache_dir=tmp_path / "cache")
    plain.setup("fit"), cached.setup("fit")
    batches = [list(dm.train_dataloader()) for dm in (plain, cached)]
    assert [len(b[0]) for b in batches[0]] == [4, 4, 4]
    for (x, y), (cx, cy) in zip(*batches, strict=True):
        assert torch.equal(x, cx) and torch.equal(y, cy)
        images, _ = plain.transform_batch((x, y), train=True)
        cached_images, _ = cached.transform_batch((cx, cy), train=True)
        assert images.shape == (4, 3, 16, 16) and torch.equal(images, cached_images)


# --- reuse and keys ----------------------------------------------------------------------------


def test_second_run_reuses_the_cache_without_decoding(tree, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    samples = samples_of(tree)
    first = load_or_build(samples, 18, tmp_path / "cache")
    stamp = first.path.stat().st_mtime_ns
    assert first.built and first.manifest["num_images"] == 15 and first.manifest["images_per_s"] > 0
    assert first.size_mb == pytest.approx((15 * 3 * 18 * 18 + 128) / 1e6)  # pixels + the .npy header
    second = load_or_build(samples, 18, tmp_path / "cache")
    assert not second.built and second.manifest["built_at"] == first.manifest["built_at"]
    assert second.path.stat().st_mtime_ns == stamp  # the file was not written again
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert np.array_equal(first.images, second.images)
    messages = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER]
    assert len(messages) == 2 and "built:" in messages[0] and "images/s" in messages[0]
    assert "reused" in messages[1] and str(first.path) in messages[1] and "15 images" in messages[1]
    assert "MB" in messages[1]


def test_a_second_datamodule_maps_the_cache_and_a_new_val_split_or_train_size_shares_it(tree, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    memory_module(tree, cache_dir=tmp_path / "cache").setup("fit")
    other = memory_module(tree, cache_dir=tmp_path / "cache", val_size=5, train_size=4, seed=1)
    other.setup("fit")
    assert (len(other.dataset("train")), len(other.dataset("val"))) == (4, 5)
    assert len(cache_files(tmp_path / "cache")) == 1
    assert [("built:" in m, "reused" in m) for m in (r.getMessage() for r in caplog.records)] == [
        (True, False), (False, True)
    ]


def test_image_size_classes_cap_or_an_edited_file_give_another_cache(tree, tmp_path):
    base = memory_module(tree, cache_dir=tmp_path / "cache")
    variants = [
        memory_module(tree, cache_dir=tmp_path / "cache", image_size=24),  # 27 px squares
        memory_module(tree, cache_dir=tmp_path / "cache", classes=["n02", "n01", "n03"]),  # same files, new labels
        memory_module(tree, cache_dir=tmp_path / "cache", classes=["n01", "n02"]),
        memory_module(tree, cache_dir=tmp_path / "cache", max_per_class=4),
    ]
    for dm in (base, *variants):
        dm.setup("fit")
    names = cache_files(tmp_path / "cache")
    assert len(names) == 5 and any(n.startswith("decoded_27px_15img_") for n in names)
    assert any(n.startswith("decoded_18px_11img_") for n in names)  # n01 + n02
    assert any(n.startswith("decoded_18px_12img_") for n in names)  # capped at 4 per class
    relabelled = variants[1].dataset("train").labels
    assert not torch.equal(relabelled, base.dataset("train").labels)

    samples = samples_of(tree)
    key = cache_key(samples, 18)
    path = Path(samples[0][0])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert cache_key(samples, 18) != key  # touched: decoded again, never trusted stale


# --- damage and errors -------------------------------------------------------------------------


def test_truncated_cache_is_detected_and_rebuilt_with_a_warning(tree, tmp_path, caplog):
    samples = samples_of(tree)
    good = load_or_build(samples, 18, tmp_path / "cache")
    expected = np.array(good.images)
    del good
    path = next((tmp_path / "cache").glob("decoded_*px_15img_*[0-9a-f].npy"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    rebuilt = load_or_build(samples, 18, tmp_path / "cache")
    assert rebuilt.built and np.array_equal(rebuilt.images, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "rebuilding" in warnings[0]
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no temporary file left behind


def test_cache_without_manifest_is_never_trusted(tree, tmp_path):
    # What a build killed before its last os.replace leaves: arrays in place, no manifest.
    samples = samples_of(tree)
    first = load_or_build(samples, 18, tmp_path / "cache")
    manifest_path = first.path.with_name(first.path.name[: -len(".npy")] + ".json")
    manifest = json.loads(manifest_path.read_text())
    manifest_path.unlink()
    again = load_or_build(samples, 18, tmp_path / "cache")
    assert again.built and again.manifest["key"] == manifest["key"] and manifest_path.is_file()


def test_cache_dir_that_cannot_be_created_is_a_one_line_error(tree, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    bad = tmp_path / "a_file" / "cache"
    dm = memory_module(tree, cache_dir=bad)
    with pytest.raises(ValueError, match=rf"^cache_dir='{bad}' cannot be created or written: .*cache_dir=null") as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="cache_dir must be a directory path or None, got ''"):
        memory_module(tree, cache_dir="")


# --- config ------------------------------------------------------------------------------------


def test_config_key_reaches_the_datamodule_and_caches_there(tree, tmp_path):
    overrides = ["data=imagenet_subset", f"data.data_dir={tree}", "data.loader=memory", "data.image_size=16",
                 "data.val_size=3", "data.num_workers=0", f"data.cache_dir={tmp_path}/cache"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        default = compose("train", overrides=["data=imagenet_subset"])
    assert default.data.cache_dir is None  # off unless asked for
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.cache_dir == tmp_path / "cache" and len(cache_files(tmp_path / "cache")) == 1


# --- benchmark ---------------------------------------------------------------------------------


def test_bench_data_compares_jpeg_decoding_with_the_cache_on_a_synthetic_tree(tmp_path):
    raw_path = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_data.py"), "--threads", "1", "--imagenet-only", "--imagenet",
         "--imagenet-images", "24", "--repeats", "2", "--warmup", "1", "--json", str(raw_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ratios = dict(re.findall(r"^ratio (\S+): ([0-9.]+)x", proc.stdout, re.MULTILINE))
    assert set(ratios) == {"cache/torchvision", "cache-loader/torchvision"}
    built = r"^# decoded cache .*decoded_256px_24img_\w+\.npy: 4\.7 MB, 24 images .*built:"
    assert re.search(built, proc.stdout, re.MULTILINE)
    raw = json.loads(raw_path.read_text())["imagenet"]
    rates = raw["images_per_s"]
    paths = ("torchvision", "cache", "cache_loader", "cache_reopen")
    assert all(len(rates[k]) == 2 and min(rates[k]) > 0 for k in paths)
    per_round = [c / t for c, t in zip(rates["cache"], rates["torchvision"])]
    assert raw["ratio_cache_over_torchvision"] == pytest.approx(per_round)
    assert float(ratios["cache/torchvision"]) == pytest.approx(sum(per_round) / 2, abs=0.051)


def test_prepare_data_builds_both_caches_so_setup_only_maps_them(tree, tmp_path, caplog):
    dm = ImageNetSubsetDataModule(tree, image_size=16, batch_size=4, loader="memory", num_workers=0,
                                  val_size=3, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # train/ and val/
    with caplog.at_level(logging.INFO, logger=CACHE_LOGGER):
        dm.setup()
    assert caplog.text.count("(reused, built") == 2 and "(built:" not in caplog.text
