"""FSDP for the student and the fake score: FSDP2 (``fully_shard``) over the processes, block by block.

The switch is accelerate's: ``accelerate launch`` with a config of ``distributed_type: FSDP``
(examples/accelerate/fsdp.yaml) puts ACCELERATE_USE_FSDP and the ``fsdp_config`` fields (as FSDP_*) into
every process's environment. The networks are sharded here rather than by accelerate's FSDP plugin, which
shards one model per ``prepare`` call (DP-DMD trains two, each with its own optimiser) and on CPU silently
runs DDP instead; so the code that shards on GPUs is the code the CPU tests run (gloo). The frozen teacher
stays whole on every process.
"""
from __future__ import annotations

import os

from torch import nn

from ..errors import ConfigError


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def is_sharded(acc) -> bool:
    """True when the launch asked for FSDP over more than one process (one process has nothing to shard)."""
    return _env("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.num_processes > 1


def check_settings() -> None:
    """Refuse the accelerate FSDP settings this sharding does not implement."""
    if _env("FSDP_VERSION", "1") != "2":
        raise ConfigError(f"the accelerate config's fsdp_version is {_env('FSDP_VERSION', '1')}; DP-DMD shards with "
                          "FSDP2: set fsdp_version: 2 (see examples/accelerate/fsdp.yaml)")
    if _env("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ConfigError("the accelerate config's fsdp_offload_params is true, which DP-DMD's FSDP does not do; "
                          "set it to false (see examples/accelerate/fsdp.yaml)")


def shard(net: nn.Module, device) -> nn.Module:
    """Shard ``net`` in place: every block of fsdp_transformer_layer_cls_to_wrap, then the rest as one unit.

    Build the network's optimiser afterwards: sharding replaces its parameters by sharded ones.
    """
    from torch.distributed.fsdp import fully_shard

    check_settings()
    classes = {c.strip() for c in _env("FSDP_TRANSFORMER_CLS_TO_WRAP").split(",") if c.strip()}
    reshard = _env("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    net = net.to(device)
    blocks = [m for m in net.modules() if type(m).__name__ in classes]
    missing = classes - {type(m).__name__ for m in blocks}
    if missing:
        raise ConfigError(f"the accelerate config's fsdp_transformer_layer_cls_to_wrap names {', '.join(sorted(missing))}"
                          f", which the {type(net).__name__} network does not have; SD3 / SD3.5: JointTransformerBlock, "
                          "SDXL: BasicTransformerBlock,ResnetBlock2D")
    for block in reversed(blocks):  # inner blocks first, should one class hold another
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(net, reshard_after_forward=reshard)
    return net
