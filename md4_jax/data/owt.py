"""'owt': OpenWebText (or any corpus) prepared by `python -m md4_jax.data.prepare_owt`, read with grain.

Records are the packed GPT-2 blocks; train is shuffled per epoch and infinite, 'validation' is the held-out split
read once in order (last incomplete global batch dropped). There is no 'test' split (MD4 and MDLM report OWT on
the held-out split).

config.data keys:
  name: 'owt'.
  path: the directory prepare_owt wrote (required).
  seq_len: L; must equal the prepared block length (1024).
"""
from __future__ import annotations

import ml_collections

from md4_jax.data import gpt2_tokenizer
from md4_jax.data import sampler as sampler_lib
from md4_jax.data import token_records
from md4_jax.data.interface import DataInfo, DataNotFoundError, DatasetSpec

_HOW = 'prepare it with `python -m md4_jax.data.prepare_owt --output_dir DIR` and set config.data.path = DIR'


def owt_default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'name': 'owt', 'path': None,
                                    'seq_len': 1024})


def owt_info(config: ml_collections.ConfigDict) -> DataInfo:
  return DataInfo(vocab_size=gpt2_tokenizer.VOCAB_SIZE, data_shape=(int(config.seq_len),), num_classes=0,
                  decode=gpt2_tokenizer.decode_gpt2, encode=gpt2_tokenizer.encode_gpt2)


def make_owt(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
             shard_count: int = 1) -> sampler_lib.RecordDataset:
  if split == 'test':
    raise ValueError("'owt' has splits train and validation (the held-out split); there is no 'test'")
  if config.path is None:
    raise DataNotFoundError(f'config.data.path is None; {_HOW}')
  records = token_records.TokenRecords(config.path, split, _HOW)
  if records.seq_len != config.seq_len:
    raise ValueError(f'config.data.seq_len={config.seq_len} but {config.path!r} holds {records.seq_len}-token '
                     'blocks; set seq_len to match or prepare the data again')
  return sampler_lib.split_dataset(records.num_records, split, lambda indices: {'x': records.fetch(indices)},
                                   batch_size=batch_size, seed=seed, shard_index=shard_index,
                                   shard_count=shard_count)


OWT = DatasetSpec(default_config=owt_default_config, info=owt_info, make=make_owt)
