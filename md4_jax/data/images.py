"""Images as token grids [H, W, C] of pixel levels: scikit-learn's 8x8 digits, and TFDS sets (CIFAR-10, ImageNet 64x64).

Batches are {'x': int32 [B, H, W, C], 'label': int32 [B]} ('label' only when num_classes > 0). Train is shuffled
per epoch and infinite; eval splits are read once in order, last incomplete global batch dropped. No augmentation.

config.data keys:
  'digits' (a real tiny image set bundled with scikit-learn: 1797 8x8 grey images, 17 levels 0-16, 10 classes):
    name, path (must be None: the data ships with scikit-learn), seq_len (None: not a sequence),
    train_fraction (0.8), validation_fraction (0.1): contiguous index ranges, test gets the rest (180 images).
  'cifar10' / 'imagenet64' (through `tfds.data_source`, ArrayRecord files read without TensorFlow):
    name, path (the TFDS data_dir; None = TFDS's default, ~/tensorflow_datasets or $TFDS_DATA_DIR),
    seq_len (None), tfds_name ('cifar10' / 'downsampled_imagenet/64x64'), image_shape ((32, 32, 3) / (64, 64, 3)),
    num_classes (10 / 0: downsampled ImageNet has no labels), label_key ('label' / None),
    tfds_splits: which TFDS split serves train / validation / test (CIFAR-10 has no validation split: both eval
    splits read 'test'; ImageNet 64x64: both read 'validation', as MD4 reports).
  The data must be prepared in ArrayRecord format on a machine with TensorFlow, e.g.
    tfds build cifar10 --file_format=array_record --data_dir=DIR
"""
from __future__ import annotations

import glob
import os

import ml_collections
import numpy as np

from md4_jax.data import sampler as sampler_lib
from md4_jax.data.interface import DataInfo, DataNotFoundError, DatasetSpec, split_bounds

DIGITS_LEVELS = 17


def digits_default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'name': 'digits', 'path': None, 'seq_len': None, 'train_fraction': 0.8,
                                    'validation_fraction': 0.1})


def cifar10_default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'cifar10', 'path': None, 'seq_len': None, 'tfds_name': 'cifar10', 'image_shape': (32, 32, 3),
      'num_classes': 10, 'label_key': 'label',
      'tfds_splits': {'train': 'train', 'validation': 'test', 'test': 'test'}})


def imagenet64_default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'imagenet64', 'path': None, 'seq_len': None, 'tfds_name': 'downsampled_imagenet/64x64',
      'image_shape': (64, 64, 3), 'num_classes': 0, 'label_key': None,
      'tfds_splits': {'train': 'train', 'validation': 'validation', 'test': 'validation'}})


def _decode_levels(num_levels: int):
  """Pixel tokens [..., H, W, C] in [0, num_levels) -> uint8 images scaled to [0, 255]."""

  def decode(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim < 3 or tokens.size and (tokens.min() < 0 or tokens.max() >= num_levels):
      raise ValueError(f'cannot decode tokens of shape {tokens.shape}: need [..., H, W, C] levels in '
                       f'[0, {num_levels})')
    return np.round(tokens * (255 / (num_levels - 1))).astype(np.uint8)

  return decode


def digits_info(config: ml_collections.ConfigDict) -> DataInfo:
  del config
  return DataInfo(vocab_size=DIGITS_LEVELS, data_shape=(8, 8, 1), num_classes=10,
                  decode=_decode_levels(DIGITS_LEVELS))


def tfds_info(config: ml_collections.ConfigDict) -> DataInfo:
  return DataInfo(vocab_size=256, data_shape=tuple(config.image_shape), num_classes=int(config.num_classes),
                  decode=_decode_levels(256))


def make_digits(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
                shard_count: int = 1) -> sampler_lib.RecordDataset:
  if config.path is not None:
    raise ValueError(f"config.data.path={config.path!r}; 'digits' ships with scikit-learn: set path to None")
  try:
    from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the 'digits' dataset needs `pip install scikit-learn`") from e
  digits = sklearn_datasets.load_digits()
  start, stop = split_bounds(len(digits.target), config.train_fraction,
                                         config.validation_fraction)[split]
  images = digits.images[start:stop, :, :, None].astype(np.int32)  # [N, 8, 8, 1] in [0, 16]
  labels = digits.target[start:stop].astype(np.int32)  # [N]
  return sampler_lib.split_dataset(len(labels), split, lambda idx: {'x': images[idx], 'label': labels[idx]},
                                   batch_size=batch_size, seed=seed, shard_index=shard_index,
                                   shard_count=shard_count)


def make_tfds(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
              shard_count: int = 1) -> sampler_lib.RecordDataset:
  data_dir = os.path.expanduser(config.path or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))
  how = (f'prepare it on a machine with TensorFlow: `tfds build {config.tfds_name} --file_format=array_record '
         f'--data_dir={data_dir}`, and set config.data.path to that data_dir')
  if not glob.glob(os.path.join(data_dir, config.tfds_name, '*', 'dataset_info.json')):
    raise DataNotFoundError(f'{config.tfds_name!r} is not prepared in {data_dir!r} (no '
                            f'{config.tfds_name}/<version>/dataset_info.json); {how}')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{config.name!r} needs `pip install tensorflow-datasets pillow` (not TensorFlow)') from e
  tfds_split = config.tfds_splits[split]
  try:
    source = tfds.data_source(config.tfds_name, split=tfds_split, data_dir=data_dir, download=False)
    num_records = len(source)
  except Exception as e:  # tfds raises a not-implemented error (not ArrayRecord), AssertionError, ValueError, ...
    raise ValueError(f'cannot open split {tfds_split!r} of {config.tfds_name!r} in {data_dir!r} '
                     f'({type(e).__name__}: {e}); {how}') from e
  image_shape, label_key = tuple(config.image_shape), config.label_key
  if config.num_classes and label_key is None:
    raise ValueError(f'num_classes={config.num_classes} needs a label_key; got None')

  def fetch(indices: np.ndarray) -> dict[str, np.ndarray]:
    examples = source.__getitems__(indices.tolist())
    images = np.stack([e['image'] for e in examples]).astype(np.int32)  # [B, H, W, C]
    if images.shape[1:] != image_shape:
      raise ValueError(f'{config.tfds_name!r} images have shape {images.shape[1:]}, but config.data.image_shape='
                       f'{image_shape}')
    batch = {'x': images}
    if config.num_classes:
      batch['label'] = np.array([e[label_key] for e in examples], np.int32)  # [B]
    return batch

  return sampler_lib.split_dataset(num_records, split, fetch, batch_size=batch_size, seed=seed,
                                   shard_index=shard_index, shard_count=shard_count)


DIGITS = DatasetSpec(default_config=digits_default_config, info=digits_info, make=make_digits)
CIFAR10 = DatasetSpec(default_config=cifar10_default_config, info=tfds_info, make=make_tfds)
IMAGENET64 = DatasetSpec(default_config=imagenet64_default_config, info=tfds_info, make=make_tfds)
