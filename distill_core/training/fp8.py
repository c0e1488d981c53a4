"""A frozen base in fp8 (``teacher.quantize = "fp8"``): linear weights as float8_e4m3fn, one scale per output channel.

Works on any ``nn.Module`` (every family): each frozen ``nn.Linear`` becomes an ``FP8Linear`` holding its weight
in one byte per value and upcasting it inside the forward pass, layer by layer, to the compute dtype (the
autocast dtype under autocast, else the input's). Nothing else changes: LoRA adapters (peft wraps an
``FP8Linear`` as it wraps any ``nn.Linear``), norms, convolutions and embeddings keep their dtype.

Choices, and why:
- the fp8 bytes are stored as ``uint8`` (a view of the e4m3 bits): ``Module.to(dtype)`` / ``.float()`` cast
  every floating tensor and would silently undo the quantisation, and peft would move new adapters to fp8;
- the per-channel scales are powers of two: casting them to bf16 is exact, and so is the dequantised weight
  (e4m3's 3 mantissa bits fit in bf16's 7), so the only error is rounding W to e4m3 once;
- the matmul is a custom autograd function that saves the fp8 weight it already holds, not the upcast
  copy, so a backward pass through the frozen base keeps no bf16 copy of the network alive.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 bits of W / s in e4m3, s): s a power of two per output row with max |W / s| <= 448."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(torch.uint8), scale


def dequantize(bits: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight ``bits`` / ``scale`` stand for, in ``dtype`` (exact in bf16 and float32)."""
    return bits.view(FP8).to(dtype) * scale.to(dtype)[:, None]


class _FP8Matmul(torch.autograd.Function):
    """x W^T + b with W upcast on the fly in forward and again in backward; W and b are frozen."""

    @staticmethod
    def forward(ctx, x, bits, scale, bias, dtype):
        ctx.save_for_backward(bits, scale)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        return F.linear(x.to(dtype), dequantize(bits, scale, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        bits, scale = ctx.saved_tensors
        grad_x = grad.to(ctx.dtype) @ dequantize(bits, scale, ctx.dtype)
        return grad_x.to(ctx.x_dtype), None, None, None, None


class FP8Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose weight is kept in fp8 (``weight`` is a uint8 buffer of e4m3 bits)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bits, scale = quantize_weight(linear.weight)
        self.register_buffer("weight", bits)
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # frozen with the rest of the base, in its own dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        with torch.autocast(kind, enabled=False):
            return _FP8Matmul.apply(x, self.weight, self.scale, self.bias, dtype)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight, self.scale, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 (per-channel scale)"


def _frozen_linear(name: str, module: nn.Module) -> bool:
    """A plain linear layer of the frozen base (not a LoRA factor, not trainable, not quantised already)."""
    return (type(module) is nn.Linear and ".lora_" not in f".{name}"
            and not any(p.requires_grad for p in module.parameters()))


def quantize_linears(net: nn.Module) -> int:
    """Replace every frozen ``nn.Linear`` of ``net`` (LoRA base layers included) by an ``FP8Linear``, one layer at a
    time (so the peak is one layer's float copy); returns how many were replaced."""
    targets = [name for name, m in net.named_modules() if _frozen_linear(name, m)]
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        setattr(parent, attr, FP8Linear(getattr(parent, attr)))
    _own_memory(net)
    return len(targets)


def _own_memory(net: nn.Module) -> None:
    """Give the tensors left unquantised (norms, embeddings, biases) memory of their own.

    diffusers loads a safetensors file on the CPU as views of one memory map of the file: a single tensor left on
    it keeps the whole mapping resident, the replaced bf16 weights included (measured: a full-size Z-Image kept
    its 12.3 GB of bf16 beside the 6.2 GB of fp8). These tensors are small; copying them releases the map.
    """
    for module in net.modules():
        fresh = ("weight", "scale") if isinstance(module, FP8Linear) else ()  # made by quantize_weight
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is not None and t.device.type == "cpu" and name not in fresh:
                    t.data = t.data.clone()


def is_quantized(net: nn.Module) -> bool:
    return any(isinstance(m, FP8Linear) for m in net.modules())


def full_precision_base(teacher, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The teacher's weights in ``dtype`` for merging a trained adapter into: the loaded network's own where it holds
    them exactly (float32 or ``dtype`` itself, not quantised), else re-read from the teacher folder."""
    net = teacher.network
    held = next(net.parameters()).dtype
    if is_quantized(net) or held not in (dtype, torch.float32):
        net = teacher.make_trainable_copy()
    return {k: v.detach().to(dtype) for k, v in net.state_dict().items()}
