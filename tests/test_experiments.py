"""The paper-table recipes (configs/experiment/) and scripts/reproduce.py, which runs them.

Every recipe composes, for training and for eval, and every job of its sweep composes into the
configuration the paper table asks for. reproduce.py's pieces are checked on real files, and the
whole pipeline (train sweep -> eval per run -> report) once on a tiny synthetic version of table7.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import CONFIG_DIR, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dsnet.data import FashionMNISTDataModule, SyntheticDataModule


def _load_reproduce():
    # scripts/ is not a package: load the script as a module to test its functions.
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = _load_reproduce()
RECIPES = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Recipes with a sweep (the shared schedules cpu_short and gpu_full are single runs).
TABLES = [name for name in RECIPES if name not in ("cpu_short", "gpu_full")]


@pytest.fixture(autouse=True)
def _hydra_config_unset_after_each_test():
    """compose_job sets Hydra's global HydraConfig, as a job sees it; later tests (in this process,
    whatever file) must not: dsnet.config reads it to tell a Hydra run from a plain call."""
    yield
    HydraConfig.instance().cfg = None


def compose_job(config_name: str, *overrides: str, tmp_path):
    """A config as Hydra's job would see it: composed, with HydraConfig set for ${hydra:...}."""
    paths = (f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[*paths, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the table7/group_sweep lookups read the data choice
    return cfg


def sweep_jobs(cfg) -> list[list[str]]:
    """The override lists of every job of the recipe's sweep, in the order Hydra runs them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    [batch] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


def test_the_tables_and_their_gpu_variants_are_there():
    assert {"table4", "table6", "table7", "group_sweep"} <= set(TABLES)
    assert {f"{t}_gpu" for t in ("table4", "table6", "table7", "group_sweep")} <= set(TABLES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_for_train_and_eval(name, tmp_path):
    cfg = compose_job("train", f"experiment={name}", tmp_path=tmp_path)
    # Every interpolation of the job's config resolves (hydra.* holds job-time values such as job.num).
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert cfg.task_name == name
    eval_cfg = compose_job("eval", f"experiment={name}", tmp_path=tmp_path)
    assert eval_cfg.data.image_size == cfg.data.image_size  # reproduce.py evaluates with the recipe
    if name in TABLES:
        assert f"/{name}/" in cfg.hydra.sweep.dir  # each table in its own directory
        # Seeds outermost: a sweep cut short has whole tables for its first seeds. conv_mix sweeps its
        # mixes outermost instead, so a sweep cut short loses whole mixes, not every mix's second seed.
        assert list(cfg.hydra.sweeper.params)[0] == ("conv_mix.mix" if name == "conv_mix" else "seed")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # (conv, groups, width, image_size, small_input) of every job, seed 1 first
        ("table4", [("standard", None, 0.25, 28, True), ("dsconv", None, 0.25, 28, True)] * 5),
        ("table6", [("dsconv", None, w, 28, True) for w in (1.0, 0.75, 0.5, 0.25)] * 3),
        ("table7", [("dsconv", None, 0.25, px, True) for px in (56, 48, 40, 32)] * 3),
        ("group_sweep", [*(("group", g, 0.25, 28, True) for g in (1, 2, 4, 8)), ("dsconv", None, 0.25, 28, True)] * 3),
        ("table7_gpu", [("dsconv", None, 1.0, px, True) for px in (64, 55, 46, 37)] * 3),
        ("resnet18_fashion", [("standard", None, 0.25, 28, True), ("dsconv", None, 0.25, 28, True),
                              ("dsconv", None, 0.6875, 28, True)] * 2),
    ],
)
def test_every_sweep_job_is_the_configuration_of_its_table(name, expected, tmp_path):
    base = compose_job("train", f"experiment={name}", tmp_path=tmp_path)
    got, seeds = [], []
    for job in sweep_jobs(base):
        cfg = compose_job("train", f"experiment={name}", *job, tmp_path=tmp_path)
        m = cfg.model
        got.append((m.conv, m.get("groups") if m.conv == "group" else None, m.width, cfg.data.image_size,
                     m.small_input))
        seeds.append((cfg.seed, cfg.data.seed))
    assert got == expected
    order = [seed for seed, _ in seeds]
    assert order == sorted(order) and order[0] == 1  # seeds outermost: seed 1's whole table first
    assert all(seed == data_seed for seed, data_seed in seeds)  # a seed also redraws the data subset


def test_table7_uses_the_paper_resolutions_on_an_imagenet_subset(tmp_path):
    (tmp_path / "imagenet" / "train" / "n01").mkdir(parents=True)
    sizes = []
    for rho in ("7/7", "6/7", "5/7", "4/7"):
        cfg = compose_job("train", "experiment=table7", "data=imagenet_subset", f"table7.rho={rho}",
                          f"data.data_dir={tmp_path}/imagenet", tmp_path=tmp_path)
        sizes.append((cfg.data.image_size, cfg.model.small_input))
    assert sizes == [(224, False), (192, False), (160, False), (128, False)]


def test_conv_mix_sweeps_six_stage_mixes_from_separable_to_full(tmp_path):
    base = compose_job("train", "experiment=conv_mix", tmp_path=tmp_path)
    full_stages, seeds = [], []
    for job in sweep_jobs(base):
        cfg = compose_job("train", "experiment=conv_mix", *job, tmp_path=tmp_path)
        net = instantiate(cfg.model)
        assert cfg.model.width == 0.5 and len(cfg.model.stage_conv) == 5
        n = sum(conv == "standard" for conv in cfg.model.stage_conv)
        assert list(cfg.model.stage_conv) == ["standard"] * n + ["dsconv"] * (5 - n)  # full early, separable late
        assert type(net.features[-1]).__name__ == ("ConvNormAct" if n == 5 else "SeparableConv")
        full_stages.append(n)
        seeds.append(cfg.seed)
    # mix outermost, the two pure ends first, then full1..full4; both seeds of a mix side by side
    assert full_stages == [0, 0, 5, 5, 1, 1, 2, 2, 3, 3, 4, 4] and seeds == [1, 2] * 6


@pytest.mark.parametrize("variant", ["g1", "g2", "g4", "g8", "depthwise"])
def test_group_sweep_variants_build_the_grouped_network_they_name(variant, tmp_path):
    cfg = compose_job("train", "experiment=group_sweep", f"group_sweep.variant={variant}", tmp_path=tmp_path)
    net = instantiate(cfg.model)
    spatial = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    groups = [(c.groups, c.in_channels) for c in spatial]
    assert len(groups) == 13  # one 3x3 step per block of Table 1
    if variant == "depthwise":
        assert all(g == chs for g, chs in groups)
    else:
        assert {g for g, _ in groups} == {int(variant[1:])}


# --- the train_size data option the CPU recipes use -------------------------------------------------

def test_train_size_keeps_a_seeded_subset_and_leaves_val_and_test_whole():
    def splits(**options):
        dm = SyntheticDataModule(num_train=200, num_test=40, val_size=50, image_size=8, **options)
        dm.setup()
        return {s: dm.dataset(s).labels for s in ("train", "val", "test")}, dm

    full, _ = splits(seed=0)
    sub, _ = splits(seed=0, train_size=60)
    assert (len(full["train"]), len(sub["train"])) == (150, 60)
    assert torch.equal(sub["val"], full["val"]) and torch.equal(sub["test"], full["test"])
    assert len(splits(seed=0, train_size=0.2)[0]["train"]) == 30  # a fraction of the 150
    again, _ = splits(seed=0, train_size=60)
    other, _ = splits(seed=1, train_size=60)
    assert torch.equal(again["train"], sub["train"])  # same seed, same subset
    assert not torch.equal(other["train"][:60], sub["train"])


@pytest.mark.parametrize(
    ("train_size", "message"),
    [(0, "train_size must be an int >= 1, got 0"), (1.5, "train_size must be a count >= 1, a fraction in (0, 1]"),
     ("10k", "train_size must be an int >= 1, got '10k'")],
)
def test_bad_train_size_is_rejected_naming_the_value(train_size, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        FashionMNISTDataModule("data", train_size=train_size)


def test_train_size_larger_than_the_training_split_says_how_many_there_are():
    dm = SyntheticDataModule(num_train=100, val_size=20, train_size=81, image_size=8)
    with pytest.raises(ValueError, match=r"train_size=81 asks for 81 training items, but only 80 .* allowed: 1..80"):
        dm.setup("fit")


# --- reproduce.py -------------------------------------------------------------------------------------

def test_unknown_recipe_is_a_clear_error_listing_the_recipes():
    with pytest.raises(ValueError, match=r"unknown recipe 'table5'.*table4, table4_gpu, table6"):
        reproduce.check_recipe("table5")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "table5"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown recipe 'table5'" in result.stderr and "table7" in result.stderr


def test_eval_gets_the_runs_overrides_that_eval_has(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- seed=2\n- model=conv\n- table7.rho=6/7\n- data=synthetic\n- data.image_size=16\n"
        "- callbacks.lr_monitor=null\n- logger=wandb\n- +extra=1\n- hydra.verbose=true\n"
        "- test=false\n- trainer.max_epochs=1\n")
    assert reproduce.eval_overrides(tmp_path) == [
        "seed=2", "model=conv", "table7.rho=6/7", "data=synthetic", "data.image_size=16", "trainer.max_epochs=1"]


def test_best_checkpoint_is_the_most_accurate_best_file(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert reproduce.best_checkpoint(tmp_path) is None
    for name in ("best-epoch001-acc0.8000.ckpt", "best-epoch002-acc0.8512.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes(b"")
    assert reproduce.best_checkpoint(tmp_path).name == "best-epoch002-acc0.8512.ckpt"


TINY = ("data=synthetic", "data.num_train=160", "data.val_size=32", "data.num_test=64", "data.batch_size=32",
        "data.train_size=null", "trainer.max_epochs=1")


@pytest.mark.slow
def test_reproduce_trains_evaluates_and_reports_a_tiny_table7(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "table7", "--out", str(out), "--threads", "1",
         "--eval", "latency.rounds=1", "--eval", "latency.min_run_time=0.02",
         "seed=1", "table7.rho=7/7,4/7", *TINY],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "reproduce.json").read_text())
    assert [s["stage"].split()[0] for s in record["stages"]] == ["train", "eval", "eval", "report"]
    assert all(s["returncode"] == 0 for s in record["stages"])

    results = {}
    for path in sorted((out / "eval").glob("*/results.json")):
        r = json.loads(path.read_text())
        train_metrics = json.loads((out / "train" / path.parent.name / "metrics.json").read_text())
        assert r["top1"] == train_metrics["test/acc"]  # eval rebuilt the run's data and network
        assert r["num_threads"] == 1
        results[r["image_size"]] = r
    assert sorted(results) == [16, 28]  # synthetic at rho = 4/7 and 7/7
    assert results[16]["macs"] < results[28]["macs"]
    with (out / "report" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["image_size"]) for r in rows) == [16, 28] and all(r["n"] == "1" for r in rows)
