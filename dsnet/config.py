"""The OmegaConf resolvers the Hydra configs use, registered by one call: :func:`register_resolvers`.

``train.py``, ``eval.py``, the scripts that compose configs and ``tests/conftest.py`` make that call
before Hydra composes anything; so does a notebook::

    from dsnet.config import register_resolvers
    register_resolvers()
    with hydra.initialize_config_dir(config_dir=".../configs", version_base="1.3"):
        cfg = hydra.compose("train", overrides=["data=cifar10"])

Calling it again is harmless. Importing this module registers nothing.

- ``${dsnet.small_input:${data.image_size}}`` -> True for images of at most 64 px, which get the
  small-image stem (fewer early stride-2 steps) of the backbones (``dsnet.models.small_input``).
- ``${dsnet.num_classes:${data.data_dir},${data.classes}}`` -> the number of classes an ImageNet
  subset has, counted by ``dsnet.data.resolve_classes`` (one place decides what a subset holds).
- ``${dsnet.ddp_start_method:}`` -> how DDP starts its processes; see :func:`ddp_start_method`.
- ``${dsnet.match_width:dsconv,standard,0.25,params,${data.image_size},${data.num_classes},${data.in_chans}}``
  -> the width at which dsconv has the parameters (or ``macs``) of standard at width 0.25, within 2%
  (``dsnet.matching.match_width``), e.g. ``model.width='${dsnet.match_width:...}'`` on the command line.
- ``${dsnet.tuned_lr:${oc.select:tuned,null},${model.conv},${trainer.max_epochs},0.1}`` -> the learning
  rate an experiment's ``tuned:`` block gives a run of that convolution type and schedule; see
  :func:`tuned_lr`.

The resolvers import what they need when they first resolve: composing a config imports no network
or data code.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf


def small_input(image_size) -> bool:
    """:func:`dsnet.models.small_input`, imported when a config first resolves it."""
    from dsnet.models import small_input as choose  # lazy: composing a config must not build networks

    return choose(image_size)


def num_classes(data_dir, classes) -> int:
    """Number of classes of the dataset subset ``classes`` under ``data_dir``."""
    from dsnet.data import resolve_classes  # lazy: composing a config must not import the data stack

    return len(resolve_classes(data_dir, classes))


def ddp_start_method() -> str:
    """``"popen"`` in a single Hydra run, ``"spawn"`` everywhere else.

    Lightning's default DDP launcher ("popen") starts ranks > 0 by re-running ``sys.argv``. That is
    right for ``python train.py ...`` (Lightning appends the run's ``hydra.run.dir``), but wrong in a
    multirun (the argv holds ``-m`` and the whole sweep, so each rank would start a new sweep; and the
    job process keeps the first job's ``LOCAL_RANK``/process group, so the next job hangs) and when
    ``train(cfg)`` is called from Python (the argv is pytest's or a notebook's). "spawn" starts the
    ranks with ``torch.multiprocessing`` inside the job, which needs no argv, and an error in any
    rank comes back as an exception of that job only.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        return "popen"
    return "spawn"


def in_multirun() -> bool:
    """True inside a job of ``python train.py -m ...`` (a Hydra multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def match_width(conv, target_conv, target_width, cost, image_size=224, num_classes=1000, in_chans=3) -> float:
    """The width of ``conv`` whose ``cost`` (params or macs) matches ``target_conv`` at ``target_width``."""
    from dsnet.matching import match_width as solve  # lazy: builds networks

    return solve(conv, target_conv, float(target_width), cost=cost, image_size=int(image_size),
                 num_classes=int(num_classes), in_chans=int(in_chans), max_width=max(1.0, 4 * float(target_width))).width


def tuned_lr(tuned, conv, max_epochs, default):
    """The learning rate of a ``conv`` run of ``max_epochs`` epochs from an experiment's ``tuned:`` block.

    ``tuned`` is that block (``{dsconv: {lr: 3.2, lr_by_epochs: {80: 1.6}}, ...}``) or None; a
    convolution type without an entry gets ``default``. ``lr_by_epochs`` gives one schedule its own
    rate; its keys are epoch counts, written ``80`` or ``"80"`` alike (YAML reads the first as an int,
    and a lookup by ``${trainer.max_epochs}`` would miss it). A key that is no epoch count is an error.
    """
    entry = (tuned or {}).get(conv)
    if entry is None:
        return default
    by_epochs = entry.get("lr_by_epochs") or {}
    if not hasattr(by_epochs, "items"):
        raise ValueError(f"tuned.{conv}.lr_by_epochs={by_epochs!r} must map epoch counts to learning rates, "
                         "e.g. {80: 1.6}")
    for key, lr in by_epochs.items():
        if isinstance(key, bool) or not re.fullmatch(r"[1-9]\d*", str(key).strip()):
            raise ValueError(f"tuned.{conv}.lr_by_epochs has the key {key!r}; its keys are epoch counts "
                             "(integers >= 1), e.g. {80: 1.6}")
        if str(int(key)) == str(max_epochs):
            return lr
    return entry.get("lr", default)


def register_resolvers() -> None:
    """Registers the ``dsnet.*`` resolvers with OmegaConf; a second call replaces them with themselves."""
    OmegaConf.register_new_resolver("dsnet.small_input", small_input, replace=True)
    OmegaConf.register_new_resolver("dsnet.num_classes", num_classes, replace=True)
    OmegaConf.register_new_resolver("dsnet.ddp_start_method", ddp_start_method, replace=True)
    OmegaConf.register_new_resolver("dsnet.match_width", match_width, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("dsnet.tuned_lr", tuned_lr, replace=True)
