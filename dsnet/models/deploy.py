"""The deploy form: a trained network turned into the network inference should run.

    net = deploy_form(model)                                        # same class, eval mode, a copy
    net = deploy_form(model, memory_format=torch.channels_last)     # as the CPU kernels prefer

Three steps, each exact up to float rounding in eval mode:

1. Re-parameterised branches are fused (timm's ``reparameterize_model``, which calls each block's
   ``fuse()``/``reparameterize()``): dsnet's ``repdsconv`` becomes exactly the depthwise + pointwise
   pair of ``dsconv``, and timm's MobileOne and RepVGG blocks their single convolutions.
2. Batch norm is folded into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``)
   wherever the traced graph (``torch.fx``) shows a ``Conv2d`` whose only use is a ``BatchNorm2d``
   (or timm's ``BatchNormAct2d``, whose activation stays), each called once; the norm becomes an
   identity (or its activation). Batch norm in eager inference is a separate pass over the
   activations; folded, it is a bias.
3. ``memory_format`` (``torch.channels_last`` or the default ``torch.contiguous_format``) is applied.

The module keeps its class and its submodule names, so its ``forward``, ``reduction`` and the rest
still work; only the folded norms are gone. Imports neither Lightning nor Hydra.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from timm.layers import BatchNormAct2d
from timm.models import reparameterize_model
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


class _ConvNormTracer(fx.Tracer):
    """Keeps convolutions and batch norms (timm's ``BatchNormAct2d`` too) as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, module_qualified_name)


def _foldable(bn: nn.Module) -> bool:
    """A batch norm that normalises with running statistics in eval mode (so it is an affine map)."""
    return type(bn) in (nn.BatchNorm2d, BatchNormAct2d) and bn.running_mean is not None


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names ``(conv, bn)`` of each batch norm that only ever sees one convolution's output.

    Raises:
        ValueError: ``torch.fx`` cannot trace ``model`` (data-dependent control flow), named in one line.
    """
    try:
        graph = _ConvNormTracer().trace(model)
    except Exception as err:  # noqa: BLE001  fx raises TraceError, TypeError, NotImplementedError... for what it cannot trace
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot fold batch norm in {type(model).__name__}: torch.fx cannot trace it ({first})") \
            from None
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable(modules[node.target]) or not node.args:
            continue
        conv = _through_identities(node.args[0], modules)
        if (isinstance(conv, fx.Node) and conv.op == "call_module" and isinstance(modules[conv.target], nn.Conv2d)
                and len(conv.users) == 1 and calls[conv.target] == 1 and calls[node.target] == 1):
            pairs.append((conv.target, node.target))
    return pairs


def _through_identities(node, modules: dict[str, nn.Module]):
    """The node behind a chain of ``nn.Identity`` modules each used once (the empty norm and activation
    slots of a bare separable step sit between its pointwise conv and the norm that follows it)."""
    while (isinstance(node, fx.Node) and node.op == "call_module" and type(modules[node.target]) is nn.Identity
           and isinstance(node.args[0], fx.Node) and len(node.args[0].users) == 1):
        node = node.args[0]
    return node


def _after_fold(bn: nn.Module) -> nn.Module:
    """What stays of a folded batch norm: nothing, or the dropout and activation of timm's ``BatchNormAct2d``."""
    return nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()


def fold_batch_norms(model: nn.Module) -> list[str]:
    """Folds, in place, every batch norm :func:`conv_bn_pairs` finds into its convolution; ``model``
    must be in eval mode. Returns the names of the folded norms."""
    if model.training:
        raise ValueError("fold_batch_norms needs the model in eval mode (model.eval()): folding uses the "
                         "running statistics")
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        model.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        model.set_submodule(bn_name, _after_fold(bn))
    return [bn_name for _, bn_name in pairs]


def deploy_form(model: nn.Module, memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """The inference form of ``model``: branches fused, batch norm folded, ``memory_format`` applied.

    Args:
        model: a trained network; it is not changed (the deploy form is a copy).
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.

    Returns:
        A copy in eval mode that computes what ``model.eval()`` computes, to float rounding.

    Raises:
        ValueError: an unknown memory format, or a network ``torch.fx`` cannot trace.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={memory_format!r}; expected one of "
                         f"{', '.join(map(str, MEMORY_FORMATS))}")
    try:
        net = reparameterize_model(copy.deepcopy(model).eval(), inplace=True).eval()  # fused blocks are new
    except (AttributeError, TypeError) as err:  # e.g. a RepVGG block whose branches were converted
        raise ValueError(f"cannot fuse the re-parameterised branches of {type(model).__name__}: {err}") from None
    with torch.no_grad():
        fold_batch_norms(net)
    return net.to(memory_format=memory_format)
