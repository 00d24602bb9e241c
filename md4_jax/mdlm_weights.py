"""Reading MDLM / ReMDM / DUO PyTorch checkpoints of MDLM's DiT into `nn.mdlm_dit` parameters (mdlm_dit.md).

Containers: a Hugging Face folder (config.json + model.safetensors or pytorch_model.bin), a bare .safetensors or
.bin state dict, or a Lightning .ckpt (its EMA weights when it has them). Safetensors are read with the
`safetensors` package's numpy API; .bin and .ckpt need torch (`pip install -e ".[torch]"`). Every check (keys,
shapes, vocabulary) runs before anything is returned; failures are ValueErrors naming the key and the shapes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
from typing import Any

import numpy as np

PREFIX = "backbone."
IGNORED = ("rotary_emb.inv_freq",)  # a buffer, recomputed (mdlm_dit.md)
TORCH_HINT = 'reading .bin / .ckpt files needs torch: pip install -e ".[torch]"'


@dataclasses.dataclass(frozen=True)
class Architecture:
  vocab_size: int  # V data tokens (the checkpoint's vocab_size is V + 1, the mask last)
  num_layers: int
  num_heads: int
  width: int
  cond_dim: int
  mlp_ratio: int
  time_conditioning: bool
  model_length: int | None  # the HF config's model_length, else None


@dataclasses.dataclass(frozen=True)
class Loaded:
  architecture: Architecture
  params: dict       # the network's parameters, unrolled blocks: {'vocab_embed': {'embedding': ...}, ...}
  description: str   # what was read and which weights were taken


def _linear(torch_name: str, path: tuple, bias: bool = True) -> list[tuple[str, tuple, bool]]:
  """A torch Linear's weight [out, in] (our kernel, transposed) and bias."""
  keys = [(f"{torch_name}.weight", path + ("kernel",), True)]
  return keys + [(f"{torch_name}.bias", path + ("bias",), False)] if bias else keys


def key_map(num_layers: int) -> list[tuple[str, tuple[str, ...], bool]]:
  """Every parameter of the DiT: (torch key, our path, transpose), in the PyTorch module's registration order
  (the order of a Lightning checkpoint's EMA shadow_params)."""
  keys = [("vocab_embed.embedding", ("vocab_embed", "embedding"), False),
          *_linear("sigma_map.mlp.0", ("sigma_map1",)),
          *_linear("sigma_map.mlp.2", ("sigma_map2",))]
  for i in range(num_layers):
    torch_block, block = f"blocks.{i}.", ("blocks", i)
    keys += [(torch_block + "norm1.weight", block + ("norm1", "scale"), False),
             *_linear(torch_block + "attn_qkv", block + ("attn_qkv",), bias=False),
             *_linear(torch_block + "attn_out", block + ("attn_out",), bias=False),
             (torch_block + "norm2.weight", block + ("norm2", "scale"), False),
             *_linear(torch_block + "mlp.0", block + ("mlp_in",)),
             *_linear(torch_block + "mlp.2", block + ("mlp_out",)),
             *_linear(torch_block + "adaLN_modulation", block + ("modulation",))]
  return keys + [("output_layer.norm_final.weight", ("final_norm", "scale"), False),
                 *_linear("output_layer.linear", ("head_linear",)),
                 *_linear("output_layer.adaLN_modulation", ("final_modulation",))]


def expected_shapes(a: Architecture) -> dict[str, tuple[int, ...]]:
  """The PyTorch shape of every key (Linear weights [out, in])."""
  d, c, v1, hidden = a.width, a.cond_dim, a.vocab_size + 1, a.mlp_ratio * a.width
  shapes = {"vocab_embed.embedding": (v1, d), "sigma_map.mlp.0.weight": (c, 256), "sigma_map.mlp.0.bias": (c,),
            "sigma_map.mlp.2.weight": (c, c), "sigma_map.mlp.2.bias": (c,),
            "output_layer.norm_final.weight": (d,), "output_layer.linear.weight": (v1, d),
            "output_layer.linear.bias": (v1,), "output_layer.adaLN_modulation.weight": (2 * d, c),
            "output_layer.adaLN_modulation.bias": (2 * d,)}
  block = {"norm1.weight": (d,), "attn_qkv.weight": (3 * d, d), "attn_out.weight": (d, d), "norm2.weight": (d,),
           "mlp.0.weight": (hidden, d), "mlp.0.bias": (hidden,), "mlp.2.weight": (d, hidden), "mlp.2.bias": (d,),
           "adaLN_modulation.weight": (6 * d, c), "adaLN_modulation.bias": (6 * d,)}
  for i in range(a.num_layers):
    shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
  return shapes


# --- containers ---------------------------------------------------------------------------------------------------


def _require(module: str, hint: str):
  """The module, imported on first use (an optional dependency); ImportError with `hint` when it is missing."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"{hint} ({error})") from error


class _Stub:
  """Stands for a class a checkpoint's pickle names outside torch / numpy / collections (hyperparameters, callback
  states): no code of it runs, its state is kept as attributes."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)


_SAFE_MODULES = ("torch", "collections", "numpy", "_codecs")
_SAFE_BUILTINS = {"dict", "list", "set", "frozenset", "tuple", "int", "float", "str", "bool", "bytes", "slice",
                  "complex", "bytearray"}


class _TolerantUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if module.split(".")[0] in _SAFE_MODULES or (module == "builtins" and name in _SAFE_BUILTINS):
      try:
        return super().find_class(module, name)
      except (ImportError, AttributeError):
        pass
    return type(name, (_Stub,), {"__module__": module})


class _TolerantPickle:
  """pickle_module for torch.load: tensors as torch writes them, any other class a _Stub."""
  Unpickler = _TolerantUnpickler
  load = staticmethod(lambda f, **kw: _TolerantUnpickler(f, **kw).load())


def _torch_file(path: str, tolerant: bool) -> Any:
  torch = _require("torch", TORCH_HINT)
  try:
    if tolerant:
      return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickle)
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for a file that is not a torch pickle
    raise ValueError(f"{path} is not a PyTorch checkpoint torch can read ({type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else ''})") from error


def _to_numpy(tree: dict, path: str) -> dict[str, np.ndarray]:
  torch = _require("torch", TORCH_HINT)
  out = {}
  for key, value in tree.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
    out[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
  return out


def _safetensors(path: str) -> dict[str, np.ndarray]:
  load_file = _require("safetensors.numpy", "reading .safetensors needs `pip install safetensors`").load_file
  try:
    return load_file(path)
  except Exception as error:  # safetensors raises its own SafetensorError for a bad header
    raise ValueError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error})") from error


def _lightning(path: str) -> tuple[dict[str, np.ndarray], str]:
  """The backbone state dict of a Lightning .ckpt: its EMA copies when it has them."""
  ckpt = _torch_file(path, tolerant=True)
  if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
    raise ValueError(f"{path} is not a Lightning checkpoint: no 'state_dict' entry")
  state = _to_numpy({k.removeprefix(PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}, path)
  if not state:
    raise ValueError(f"{path}: its state_dict has no '{PREFIX}*' keys (not an MDLM-family checkpoint)")
  shadow = ckpt["ema"].get("shadow_params") if isinstance(ckpt.get("ema"), dict) else None
  if not shadow:
    return state, "state_dict (the checkpoint has no EMA weights)"
  params = [k for k in state if k not in IGNORED]  # registration order = the state dict's order
  if len(shadow) < len(params):
    raise ValueError(f"{path}: ema.shadow_params holds {len(shadow)} tensors, fewer than the {len(params)} "
                     "backbone parameters")
  ema = _to_numpy(dict(zip(params, shadow)), path)
  for key in params:
    if ema[key].shape != state[key].shape:
      raise ValueError(f"{path}: EMA tensor for key {key!r} has shape {ema[key].shape}, the state_dict's "
                       f"{state[key].shape}: shadow_params is not in the backbone's parameter order")
  return ema, f"the EMA weights (ema.shadow_params, {len(params)} backbone tensors)"


def read_container(path: str) -> tuple[dict[str, np.ndarray], dict | None, str]:
  """(state dict without the 'backbone.' prefix, the HF config or None, a description of what was read)."""
  if os.path.isdir(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
      raise ValueError(f"{path} is a folder without config.json: not a Hugging Face checkpoint folder")
    with open(config_path) as f:
      try:
        hf_config = json.load(f)
      except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        state, _, _ = read_container(os.path.join(path, name))
        return state, hf_config, f"Hugging Face folder {path} ({name})"
    raise ValueError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
  if not os.path.isfile(path):
    raise ValueError(f"no checkpoint at {path!r}")
  extension = os.path.splitext(path)[1]
  if extension == ".safetensors":
    state, what = _safetensors(path), f"safetensors state dict {path}"
  elif extension == ".bin":
    loaded = _torch_file(path, tolerant=False)
    if not isinstance(loaded, dict):
      raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    state, what = _to_numpy(loaded, path), f"PyTorch state dict {path}"
  elif extension == ".ckpt":
    state, taken = _lightning(path)
    return state, None, f"Lightning checkpoint {path}: took {taken}"
  else:
    raise ValueError(f"{path}: unknown checkpoint file type {extension!r}; valid: a Hugging Face folder, "
                     ".safetensors, .bin, .ckpt")
  prefixed = [k.startswith(PREFIX) for k in state]
  if any(prefixed) and not all(prefixed):
    extra = next(k for k in state if not k.startswith(PREFIX))
    raise ValueError(f"{path}: unexpected key {extra!r} beside the '{PREFIX}*' keys")
  return {k.removeprefix(PREFIX): v for k, v in state.items()}, None, what


# --- checks and mapping ------------------------------------------------------------------------------------------


def _need(state: dict, key: str, ndim: int) -> tuple[int, ...]:
  if key not in state:
    raise ValueError(f"missing key {key!r}: not an MDLM DiT checkpoint")
  shape = tuple(state[key].shape)
  if len(shape) != ndim:
    raise ValueError(f"key {key!r}: expected a {ndim}-d tensor, found shape {shape}")
  return shape


def architecture(state: dict, hf_config: dict | None, *, num_heads: int | None,
                 time_conditioning: bool | None) -> Architecture:
  """The DiT's sizes from the tensors' shapes; heads and time conditioning from the HF config, else the
  arguments (None: width // 64 heads as MDLM's sizes have, no time conditioning as MDLM's OWT model)."""
  vocab_rows, width = _need(state, "vocab_embed.embedding", 2)
  cond_dim = _need(state, "sigma_map.mlp.0.weight", 2)[0]
  hidden = _need(state, "blocks.0.mlp.0.weight", 2)[0]
  blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
  hf = hf_config or {}
  if num_heads is None:
    num_heads = int(hf.get("n_heads", max(1, width // 64)))
  if time_conditioning is None:
    time_conditioning = bool(hf.get("time_conditioning", False))
  if "vocab_size" in hf and int(hf["vocab_size"]) != vocab_rows:
    raise ValueError(f"config.json says vocab_size={hf['vocab_size']} but key 'vocab_embed.embedding' has "
                     f"{vocab_rows} rows")
  return Architecture(vocab_size=vocab_rows - 1, num_layers=max(blocks) + 1, num_heads=num_heads, width=width,
                      cond_dim=cond_dim, mlp_ratio=max(1, hidden // width), time_conditioning=time_conditioning,
                      model_length=int(hf["model_length"]) if "model_length" in hf else None)


def check_keys(state: dict, a: Architecture, source: str) -> None:
  """Refuses a missing or extra key, or a shape that does not fit (naming the key and both shapes)."""
  expected = expected_shapes(a)
  missing = [k for k in expected if k not in state]
  if missing:
    raise ValueError(f"{source}: missing key {missing[0]!r} (expected shape {expected[missing[0]]})"
                     + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  extra = [k for k in state if k not in expected and k not in IGNORED]
  if extra:
    raise ValueError(f"{source}: unexpected key {extra[0]!r} (shape {tuple(state[extra[0]].shape)})"
                     + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
  for key, shape in expected.items():
    if tuple(state[key].shape) != shape:
      raise ValueError(f"{source}: key {key!r} has shape {tuple(state[key].shape)}; expected {shape}")


def to_params(state: dict, a: Architecture) -> dict:
  """Our unrolled parameter tree (float32), Linear weights transposed to [in, out]."""
  params: dict = {}
  for key, path, transpose in key_map(a.num_layers):
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    value = np.asarray(state[key], np.float32)
    node[path[-1]] = np.ascontiguousarray(value.T) if transpose else value
  return params


def load(path: str, *, num_heads: int | None = None, time_conditioning: bool | None = None) -> Loaded:
  """Reads and checks the checkpoint at `path` (see the module docstring)."""
  state, hf_config, description = read_container(path)
  a = architecture(state, hf_config, num_heads=num_heads, time_conditioning=time_conditioning)
  check_keys(state, a, path)
  return Loaded(a, to_params(state, a), description)
