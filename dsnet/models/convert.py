"""Network conversion: a timm or torchvision classifier with its full k×k convolutions swapped for
depthwise-separable (``dsconv``) or grouped + pointwise (``group``) ones.

    net = create_model("timm:resnet18", conv="dsconv")      # or "torchvision:resnet50", ...

The network is built with random weights (no download: nothing here needs pretrained weights).
Every plain ``nn.Conv2d`` with a kernel larger than 1×1 and ``groups == 1`` is replaced by
:func:`dsnet.blocks.spatial_conv`, the step dsnet's own ResNets use: same stride, padding, dilation
and channel counts, so every output shape stays, and nothing between the two steps (Xception's
choice; the norm and activation that followed the full convolution now follow the pointwise one).
Depthwise, grouped and 1×1 convolutions are kept. So is the first convolution (the stem, which
sees the image), unless ``convert_stem=True``, as in dsnet's ResNets; converting torchvision's or
timm's ResNet-18 therefore gives exactly the parameters and multiply-adds of
``create_model("resnet18", conv=...)``.

Refused, in one line: a source that is not ``timm:<name>`` or ``torchvision:<name>`` of a
classification model, a width other than 1.0, a convolution that cannot be converted (a subclass of
``nn.Conv2d`` such as timm's ``Conv2dSame``, a padding mode other than zeros, ``groups`` that do not
divide its channels) and a network with nothing to convert.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from dsnet.blocks import init_weights, spatial_conv
from dsnet.models.cost import LAYER_TYPES, count_params, layer_costs, layer_type

log = logging.getLogger(__name__)

SOURCES = ("timm", "torchvision")
PROBE_PX = 224  # image side of the forward pass that finds a torchvision network's total stride


def is_source(arch: str) -> bool:
    """True for a conversion source such as ``"timm:resnet18"`` (as opposed to a dsnet arch)."""
    return isinstance(arch, str) and ":" in arch


def build_source(source: str, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """The network ``source`` names (``timm:<name>`` or ``torchvision:<name>``), randomly initialised."""
    # Imported here: together they take longer to import than torch, and only a conversion needs them.
    import timm
    import torchvision

    library, _, name = source.partition(":")
    if library == "timm":
        if not timm.is_model(name):
            raise ValueError(f"source={source!r}: timm has no model {name!r} (see timm.list_models())")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if library == "torchvision":
        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            raise ValueError(f"source={source!r}: torchvision has no classification model {name!r} "
                             "(see torchvision.models.list_models(module=torchvision.models))")
        if in_chans != 3:
            raise ValueError(f"source={source!r}: torchvision networks take 3 input channels, not "
                             f"in_chans={in_chans}; use a timm: source for other inputs")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"source={source!r} must be <library>:<model> with library one of {', '.join(SOURCES)}")


def is_full_spatial(module: nn.Module) -> bool:
    """A convolution this module converts: 2-D, kernel larger than 1×1, one group."""
    return isinstance(module, nn.Conv2d) and module.groups == 1 and max(module.kernel_size) > 1


def _replacement(name: str, module: nn.Conv2d, conv: str, groups: int | None) -> nn.Module:
    where = f"{name} ({type(module).__name__} {module.in_channels} -> {module.out_channels} channels)"
    if type(module) is not nn.Conv2d:  # a subclass may pad or scale in its forward: not ours to drop
        raise ValueError(f"cannot convert {where}: only plain torch.nn.Conv2d layers are converted")
    if module.padding_mode != "zeros":
        raise ValueError(f"cannot convert {where}: padding_mode={module.padding_mode!r}, only 'zeros' is supported")
    try:
        new = spatial_conv(conv, module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, groups=groups, bias=module.bias is not None)
    except ValueError as err:
        raise ValueError(f"cannot convert {where}: {err}") from None
    init_weights(new)  # group-aware He init, as dsnet's own networks get
    return new.to(module.weight.device, module.weight.dtype)


def convert_convs(model: nn.Module, conv: str, *, groups: int | None = None,
                  convert_stem: bool = False) -> tuple[list[str], str | None]:
    """Replace, in place, every full k×k convolution of ``model`` by one of type ``conv``.

    Returns:
        ``(converted, kept_stem)``: the names of the converted layers, and the name of the stem
        convolution left full (None when ``convert_stem`` or the first convolution is no full k×k one).
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    targets = [(name, m) for name, m in convs if is_full_spatial(m)]
    kept_stem = None
    if not convert_stem and convs and is_full_spatial(convs[0][1]):
        kept_stem = convs[0][0]
        targets = targets[1:]
    if conv == "standard":
        return [], kept_stem
    replacements = {name: _replacement(name, m, conv, groups) for name, m in targets}  # all checked first
    for name, new in replacements.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return list(replacements), kept_stem


@dataclasses.dataclass
class ConversionReport:
    """What a conversion changed: layer counts per kind (:data:`dsnet.models.cost.LAYER_TYPES`) and costs."""

    source: str
    conv: str
    input_size: tuple[int, int, int]
    converted: list[str]
    kept_stem: str | None
    layers_before: dict[str, int]
    layers_after: dict[str, int]
    params_before: int
    params_after: int
    macs_before: int  # forward multiply-adds of one input_size image
    macs_after: int

    def lines(self) -> list[str]:
        """The report as log lines."""
        kinds = ", ".join(f"{kind} {self.layers_before[kind]} -> {self.layers_after[kind]}" for kind in LAYER_TYPES)
        stem = f"stem {self.kept_stem} kept full" if self.kept_stem else "stem converted too"
        px = "x".join(map(str, self.input_size))
        return [
            f"{self.source} -> conv={self.conv}: {len(self.converted)} full k×k convolutions converted ({stem})",
            f"  layers: {kinds}",
            f"  params: {self.params_before:,} -> {self.params_after:,} "
            f"(before/after {self.params_before / self.params_after:.2f}x)",
            f"  MACs per {px} image: {self.macs_before:,} -> {self.macs_after:,} "
            f"(before/after {self.macs_before / self.macs_after:.2f}x)",
        ]


def _layer_counts(model: nn.Module) -> dict[str, int]:
    counts = dict.fromkeys(LAYER_TYPES, 0)
    for module in model.modules():
        if layer_type(module):
            counts[layer_type(module)] += 1
    return counts


def convert_network(model: nn.Module, conv: str, *, source: str = "network", groups: int | None = None,
                    convert_stem: bool = False, input_size: tuple[int, int, int] = (3, 224, 224)) -> ConversionReport:
    """:func:`convert_convs`, counted before and after (parameters, MACs of one ``input_size`` image)."""
    layers_before, params_before = _layer_counts(model), count_params(model)
    macs_before = sum(cost.macs for cost in layer_costs(model, input_size))
    converted, kept_stem = convert_convs(model, conv, groups=groups, convert_stem=convert_stem)
    if conv != "standard" and not converted:
        stem = f" besides the stem {kept_stem} (convert_stem=true converts it)" if kept_stem else ""
        raise ValueError(f"{source} has no full k×k convolution to convert to conv={conv!r}{stem}")
    return ConversionReport(
        source=source, conv=conv, input_size=tuple(input_size), converted=converted, kept_stem=kept_stem,
        layers_before=layers_before, layers_after=_layer_counts(model),
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=sum(cost.macs for cost in layer_costs(model, input_size)),
    )


class ConvertedNetwork(nn.Module):
    """A converted network (``net``) with the input-size guard dsnet's backbones have."""

    def __init__(self, net: nn.Module, source: str, report: ConversionReport):
        super().__init__()
        self.net = net
        self.source = source
        self.report = report
        self.num_classes = getattr(net, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def reduction(self) -> int:
        """Total stride to the last feature map: timm's ``feature_info``, else found by one forward pass."""
        info = getattr(self.net, "feature_info", None)
        if isinstance(info, list) and info and "reduction" in info[-1]:
            return int(info[-1]["reduction"])
        sides = []
        hooks = [m.register_forward_hook(lambda m, i, out: sides.append(out.shape[-1]))
                 for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
        was_training = self.training
        try:
            with torch.inference_mode():
                self.eval()(torch.zeros(1, self.report.input_size[0], PROBE_PX, PROBE_PX))
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return round(PROBE_PX / min(sides))

    def check_input_size(self, image_size: int) -> None:
        """Raises a ValueError naming ``image_size`` when it is below :attr:`reduction`."""
        if image_size < self.reduction:
            raise ValueError(f"image_size={image_size} is too small for {self.source}, which downsamples by "
                             f"{self.reduction}: use at least {self.reduction}")


def create_converted(source: str, *, conv: str = "dsconv", width: float = 1.0, num_classes: int = 1000,
                     in_chans: int = 3, groups: int | None = None, convert_stem: bool = False,
                     image_size: int = 224) -> ConvertedNetwork:
    """Build ``source`` (see :func:`build_source`) and convert it; logs the :class:`ConversionReport`.

    Args:
        source: ``timm:<name>`` or ``torchvision:<name>``.
        conv: ``standard`` (no change), ``dsconv`` or ``group`` (with ``groups``).
        width: must be 1.0: a conversion keeps the source's channel counts.
        convert_stem: convert the first convolution too.
        image_size: side (px) of the image the report counts multiply-adds for.
    """
    if width != 1.0:
        raise ValueError(f"width={width!r}: a converted network keeps the channels of {source}; only width=1.0")
    net = build_source(source, num_classes=num_classes, in_chans=in_chans)
    report = convert_network(net, conv, source=source, groups=groups, convert_stem=convert_stem,
                             input_size=(in_chans, image_size, image_size))
    for line in report.lines():
        log.info(line)
    return ConvertedNetwork(net, source, report)
