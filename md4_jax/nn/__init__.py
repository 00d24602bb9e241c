"""Denoising networks: (z_t, t, cond) -> logits over the V data tokens (md4.md §4).

`NETWORKS` maps a kind to (config class, module class); `make_network` is the one place a kind
string becomes a module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from md4_jax.nn.mdlm_dit import MDLM_DIT_SIZES, MDLMDiT, MDLMDiTConfig
from md4_jax.nn.transformer import TRANSFORMER_SIZES, Transformer, TransformerConfig
from md4_jax.nn.unet import UNET_SIZES, UNet, UNetConfig
from md4_jax.nn.uvit import UVIT_SIZES, UViT, UViTConfig

NETWORKS = {
    "transformer": (TransformerConfig, Transformer),
    "unet": (UNetConfig, UNet),
    "uvit": (UViTConfig, UViT),
    "mdlm_dit": (MDLMDiTConfig, MDLMDiT),  # MDLM / ReMDM / DUO checkpoints (md4_jax.convert)
}
SIZES = {"transformer": TRANSFORMER_SIZES, "unet": UNET_SIZES, "uvit": UVIT_SIZES, "mdlm_dit": MDLM_DIT_SIZES}


def make_network(kind: str, config_kwargs: dict[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
  """Builds NETWORKS[kind] from its config fields; unknown kinds or fields raise ValueError."""
  if kind not in NETWORKS:
    raise ValueError(f"unknown network {kind!r}; valid: {', '.join(NETWORKS)}")
  config_cls, network_cls = NETWORKS[kind]
  fields = [f.name for f in dataclasses.fields(config_cls)]
  unknown = sorted(set(config_kwargs) - set(fields))
  if unknown:
    raise ValueError(f"unknown {config_cls.__name__} fields {unknown}; valid: {', '.join(fields)}")
  missing = [f.name for f in dataclasses.fields(config_cls)
             if f.name not in config_kwargs and f.default is dataclasses.MISSING]
  if missing:
    raise ValueError(f"{config_cls.__name__} needs fields {missing}")
  return network_cls(config_cls(**config_kwargs), rngs=rngs)
