"""Equal-cost comparisons: the width at which one convolution type costs what another does.

    >>> match_width("dsconv", "standard", 0.25, cost="params", image_size=28, num_classes=10, in_chans=1)
    Match(width=0.74, cost=1769682, target=1771650, rel_error=-0.00111..., ...)

One function, :func:`match_width`, called by the ``${dsnet.match_width:...}`` config resolver
(``dsnet/config.py``) and by ``python -m dsnet.study match``. Cost is parameters, multiply-adds (both from
``dsnet.models.cost``) or any measured number a callable returns for a network (say, latency in ms).

Widths round channel counts to multiples of 8 (``dsnet.blocks.make_divisible``), so cost is a step
function of the width: many widths build the same network, and usually no width hits the target
exactly. The search therefore runs over the widths ``k * resolution`` (k a positive integer) and
returns the step closest to the target: bisection finds the smallest such width whose cost reaches
the target, and the width one ``resolution`` below it is the other candidate. Of the two, the one
with the smaller relative error wins; on a tie, the smaller width (the cheaper network). Within a
step the smallest width that builds it is returned, so the answer is unique. Parameters and
multiply-adds never decrease with the width; a measured cost may be noisy, and bisection then finds
a width near the target, not necessarily the nearest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from dsnet.models import create_model
from dsnet.models import small_input as default_small_input
from dsnet.models.cost import count_macs, count_params

COSTS = ("params", "macs")


@dataclass(frozen=True)
class Match:
    """The width found and what it costs, next to the target."""

    width: float
    cost: float
    target: float
    rel_error: float  # (cost - target) / target
    target_conv: str
    target_width: float
    conv: str
    cost_name: str


def match_width(
    conv: str,
    target_conv: str,
    target_width: float,
    *,
    cost: str | Callable[[nn.Module], float] = "params",
    tolerance: float = 0.02,
    resolution: float = 0.01,
    max_width: float = 4.0,
    arch: str = "mobilenet_v1",
    image_size: int = 224,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool | None = None,
    groups: int | None = None,
    target_groups: int | None = None,
) -> Match:
    """The width at which ``conv`` costs what ``target_conv`` costs at ``target_width``.

    Args:
        conv: the convolution type whose width is searched (``standard``, ``dsconv``, ``group``).
        target_conv: the convolution type of the network to match, at ``target_width``.
        cost: ``"params"``, ``"macs"`` (per image at ``image_size``) or a callable network -> cost,
            e.g. ``lambda net: measure_latency(net, (1, 28, 28))["latency_ms_p50"]``.
        tolerance: the largest relative error ``|cost - target| / target`` accepted.
        resolution: the widths searched are its multiples; the returned width is one.
        max_width: the widest network searched.
        arch, image_size, num_classes, in_chans, small_input: the network both sides are built as
            (``small_input=None``: the stem ``dsnet.models.small_input`` picks for ``image_size``).
        groups, target_groups: groups of a ``group`` conv on either side.

    Raises:
        ValueError: a cost name not in COSTS, a bad tolerance or resolution, a target cost outside
            what widths ``resolution`` .. ``max_width`` reach, or no width within ``tolerance``.
    """
    if not callable(cost) and cost not in COSTS:
        raise ValueError(f"cost={cost!r}: expected one of {', '.join(COSTS)} or a callable network -> cost")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance!r} must be in (0, 1) (a relative error)")
    if not 0 < resolution <= target_width or not resolution < max_width:
        raise ValueError(f"resolution={resolution!r} must be > 0 and at most target_width={target_width!r}")
    small = default_small_input(image_size) if small_input is None else small_input
    cost_name = cost if isinstance(cost, str) else getattr(cost, "__name__", "measured")

    def cost_of(conv_type: str, width: float, groups_: int | None) -> float:
        options = {"groups": groups_} if conv_type == "group" else {}
        net = create_model(arch, conv=conv_type, width=width, num_classes=num_classes, in_chans=in_chans,
                           small_input=small, **options)
        if cost == "params":
            return count_params(net)
        if cost == "macs":
            return count_macs(net, (in_chans, image_size, image_size))
        return float(cost(net))

    target = cost_of(target_conv, target_width, target_groups)
    cache: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in cache:
            cache[k] = cost_of(conv, round(k * resolution, 10), groups)
        return cache[k]

    lo, hi = 1, math.floor(max_width / resolution + 1e-9)
    if not at(lo) <= target <= at(hi):
        raise ValueError(
            f"{target_conv} at width {target_width} costs {_num(target)} {cost_name}, outside what {conv} reaches "
            f"at widths {lo * resolution:g}..{hi * resolution:g} ({_num(at(lo))}..{_num(at(hi))})"
        )
    while hi - lo > 1:  # invariant: at(lo) <= target <= at(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
    k = hi if at(lo) != at(hi) and abs(at(hi) - target) < abs(at(lo) - target) else lo
    while k > 1 and at(k - 1) == at(k):  # the smallest width of this step
        k -= 1
    found = Match(round(k * resolution, 10), at(k), target, (at(k) - target) / target,
                  target_conv, float(target_width), conv, cost_name)
    if abs(found.rel_error) > tolerance:
        # a counted cost steps with the channel count; a measured one also wobbles from call to call
        hint = "try a smaller resolution" if isinstance(cost, str) else \
            "a measured cost may be noise: time longer, on a quiet machine, or try a smaller resolution"
        raise ValueError(
            f"no width of {conv} costs {_num(target)} {cost_name} within {tolerance:.1%}: the nearest, "
            f"width {found.width:g}, costs {_num(found.cost)} ({found.rel_error:+.1%}); {hint}"
        )
    return found


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
