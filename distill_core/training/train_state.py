"""Full (unsharded) states of the prepared networks and optimisers, the same under one process, DDP and FSDP.

Checkpoints hold one full copy of each network and optimiser state, keyed by
parameter names, so a run resumes on any number of processes and under any of
the three ways of running. Under FSDP gathering a state is a collective: every
process calls these functions, and the full state arrives on the main process.
torch.distributed.checkpoint's state-dict API does the (un)sharding; the files
stay safetensors (its own on-disk format would pickle metadata).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError
from .adapters import is_lora, trainable_state
from .lora import AdapterView

_WRAPPERS = re.compile(r"(_fsdp_wrapped_module\.|_checkpoint_wrapped_module\.|_orig_mod\.|^module\.)")


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(acc, net: nn.Module) -> dict[str, torch.Tensor]:
    """A prepared network's whole state (a shared base's view: as its LoRA copy's), complete on the main process
    (collective)."""
    from torch.distributed.fsdp import FSDPModule

    inner = acc.unwrap_model(net)
    if isinstance(inner, AdapterView):
        return inner.copy_state()
    if isinstance(net, FSDPModule):  # sharding.shard's: gathered onto the main process's CPU memory
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(net, options=_options(cpu_offload=True))
    return acc.get_state_dict(net)


def network_state(acc, net: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpointed part of a prepared network: all weights, or only its LoRA adapters (collective)."""
    return trainable_state(full_state(acc, net))


def load_network_state(acc, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a full state (as ``network_state`` wrote it) into a prepared, possibly sharded network."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    inner = acc.unwrap_model(net)
    if isinstance(inner, AdapterView):
        inner.load_adapter(state)
        return
    lora = is_lora(inner)
    if lora:
        expected = {_WRAPPERS.sub("", n) for n, _ in inner.named_parameters() if ".lora_" in n}
        if set(state) != expected:
            diff = sorted(set(state) ^ expected)
            raise CheckpointError(f"the checkpoint's LoRA adapters do not match student.lora_rank / the network "
                                  f"({len(diff)} tensors differ, e.g. {diff[0]!r})")
    set_model_state_dict(net, state, options=_options(strict=not lora))


def optimizer_state(net: nn.Module, optimizer) -> dict:
    """The optimiser's full state keyed by parameter names; complete on the main process (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner_opt = getattr(optimizer, "optimizer", optimizer)
    state = get_optimizer_state_dict(net, inner_opt, options=_options(cpu_offload=True))
    inner = getattr(net, "module", net)
    return _renamed(state, inner.copy_name) if isinstance(inner, AdapterView) else state


def load_optimizer_state(net: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    inner = getattr(net, "module", net)
    if isinstance(inner, AdapterView):
        state = _renamed(state, inner.view_name)
    set_optimizer_state_dict(net, getattr(optimizer, "optimizer", optimizer), state, options=_options())


def _renamed(state: dict, rename) -> dict:
    """An optimiser state keyed by parameter names, with every name through ``rename`` (a shared base's view
    stores its optimiser as its LoRA copy would); empty off the main process, as a gathered state is."""
    if not state:
        return state
    groups = [{**g, "params": [rename(n) for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {rename(n): v for n, v in state["state"].items()}, "param_groups": groups}
