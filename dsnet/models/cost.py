"""What a network costs: parameters and multiply-adds, per layer and per layer type.

The training log, ``eval.py``, the report, width matching and the benchmarks all count with these,
so every number dsnet prints is counted the same way. They take any ``nn.Module``, and need torch only.

Units: ``macs`` are multiply-accumulates (one multiply and one add), the unit of the MobileNet
papers. ``torch.utils.flop_counter`` reports FLOPs, two per multiply-add; we halve them. Like the
papers, only convolutions and fully connected layers count (norms, activations, pooling, biases do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# What a counted layer is, by its shape alone (see layer_type): the rows of the cost breakdowns.
LAYER_TYPES = ("standard", "depthwise", "pointwise", "grouped", "linear")


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (batch-norm scale and shift included, running stats not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_type(module: nn.Module) -> str | None:
    """Which of :data:`LAYER_TYPES` ``module`` is, or None when it does no multiply-adds we count."""
    if isinstance(module, nn.Linear):
        return "linear"
    if not isinstance(module, nn.Conv2d):
        return None
    if module.groups == 1:
        return "pointwise" if module.kernel_size == (1, 1) else "standard"
    if module.groups == module.in_channels:
        return "depthwise"
    return "grouped"


@dataclass
class LayerCost:
    """One convolution or linear layer's cost for one image."""

    name: str
    layer_type: str
    params: int
    macs: int  # forward
    input_requires_grad: bool  # False for the first layer: its input gradient is never computed
    activations: int = 0  # output elements (pycls's "acts")
    memory_bytes: int = 0  # fp32 bytes read and written: input + weights + output


BYTES_PER_ELEMENT = 4  # memory traffic is counted in fp32, the precision the costs describe


def _dummy_input(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size={tuple(input_size)!r} must be (channels, height, width), all positive")
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    return torch.zeros(1, *input_size, device=device)


def layer_costs(model: nn.Module, input_size: tuple[int, int, int]) -> list[LayerCost]:
    """Per-layer forward multiply-adds of one (C, H, W) image, counted by ``torch.utils.flop_counter``."""
    leaves = {name: module for name, module in model.named_modules() if layer_type(module)}
    grad_flags: dict[str, bool] = {}
    elements: dict[str, tuple[int, int]] = {}  # name -> (input, output) elements

    def remember_input_grad(name):
        return lambda module, inputs: grad_flags.__setitem__(name, inputs[0].requires_grad)

    def remember_sizes(name):
        return lambda module, inputs, output: elements.__setitem__(name, (inputs[0].numel(), output.numel()))

    hooks = [m.register_forward_pre_hook(remember_input_grad(n)) for n, m in leaves.items()]
    hooks += [m.register_forward_hook(remember_sizes(n)) for n, m in leaves.items()]
    was_training = model.training
    model.eval()  # batch-norm in train mode would update running stats
    try:
        with FlopCounterMode(display=False) as counter:
            model(_dummy_input(model, input_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    costs = []
    for name, module in leaves.items():
        if name not in grad_flags:  # a layer the forward pass never reached
            continue
        key = f"{root}.{name}" if name else root  # the counter names modules by path from the root
        layer_flops = sum(flops.get(key, {}).values())
        params = sum(p.numel() for p in module.parameters())
        inputs, outputs = elements[name]
        costs.append(LayerCost(
            name=name,
            layer_type=layer_type(module),
            params=params,
            macs=layer_flops // 2,
            input_requires_grad=grad_flags[name],
            activations=outputs,
            memory_bytes=BYTES_PER_ELEMENT * (inputs + params + outputs),
        ))
    return costs


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass for one image of shape ``input_size`` = (C, H, W)."""
    return sum(cost.macs for cost in layer_costs(model, input_size))


def count_train_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of one training step (forward + backward) for one image.

    The backward of a layer computes the weight gradient (as many multiply-adds as its forward) and,
    unless the layer sees the raw input, the input gradient (as many again). Counted here per layer,
    because ``FlopCounterMode`` multiplies the weight gradient of a grouped convolution by its
    group count.
    """
    return _train_macs(layer_costs(model, input_size))


def macs_breakdown(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, dict[str, int]]:
    """Parameters and forward multiply-adds per layer type (the paper's Table 2, generalised)."""
    return _breakdown(layer_costs(model, input_size))


def model_cost(model: nn.Module, input_size: tuple[int, int, int]) -> dict:
    """``params``, ``macs``, ``train_macs``, ``macs_breakdown``, ``activations`` and
    ``memory_traffic_bytes`` of one image, from one counted pass.

    ``activations`` (pycls's count) and ``memory_traffic_bytes`` (fp32 input + weights + output of
    every layer, read and written once) sum over the counted layers, convolutions and linear.
    """
    costs = layer_costs(model, input_size)
    return {
        "params": count_params(model),
        "macs": sum(cost.macs for cost in costs),
        "train_macs": _train_macs(costs),
        "macs_breakdown": _breakdown(costs),
        "activations": sum(cost.activations for cost in costs),
        "memory_traffic_bytes": sum(cost.memory_bytes for cost in costs),
    }


def _train_macs(costs: list[LayerCost]) -> int:
    return sum(cost.macs * (2 + int(cost.input_requires_grad)) for cost in costs)


def _breakdown(costs: list[LayerCost]) -> dict[str, dict[str, int]]:
    breakdown = {kind: {"params": 0, "macs": 0} for kind in LAYER_TYPES}
    for cost in costs:
        breakdown[cost.layer_type]["params"] += cost.params
        breakdown[cost.layer_type]["macs"] += cost.macs
    return breakdown
