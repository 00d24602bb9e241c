"""Image pipelines: scikit-learn digits and TFDS ArrayRecord sets (on a tiny set this test prepares, no TensorFlow)."""
from __future__ import annotations

import io

import numpy as np
import pytest

import md4_jax.data as data


def _config(name: str, **overrides):
  config = data.default_data_config(name)
  config.update(overrides)
  return config


def test_digits_splits_labels_and_decode():
  sklearn_datasets = pytest.importorskip('sklearn.datasets')
  digits = sklearn_datasets.load_digits()
  config = _config('digits')
  info = data.dataset_info(config)
  assert (info.vocab_size, info.data_shape, info.num_classes) == (17, (8, 8, 1), 10)
  train = data.make_dataset(config, 'train', batch_size=479, seed=0)  # 1437 = 3 x 479 training images
  batches = [next(train) for _ in range(3)]
  x = np.concatenate([b['x'] for b in batches])
  label = np.concatenate([b['label'] for b in batches])
  assert x.dtype == label.dtype == np.int32 and x.shape == (1437, 8, 8, 1)
  order = np.lexsort(x.reshape(1437, -1).T)  # compare as sets of (image, label) pairs
  expected_order = np.lexsort(digits.images[:1437].reshape(1437, -1).T)
  np.testing.assert_array_equal(x[order, ..., 0], digits.images[:1437][expected_order])
  np.testing.assert_array_equal(label[order], digits.target[:1437][expected_order])
  test = list(data.make_dataset(config, 'test', batch_size=60, seed=0))  # images 1617..1796, in order
  np.testing.assert_array_equal(np.concatenate([b['x'] for b in test])[..., 0], digits.images[1617:])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in test]), digits.target[1617:])
  np.testing.assert_array_equal(info.decode(np.array([0, 8, 16]).reshape(1, 3, 1)).ravel(), [0, 128, 255])
  with pytest.raises(ValueError, match=r'levels in \[0, 17\)'):
    info.decode(np.full((8, 8, 1), 17))
  with pytest.raises(ValueError, match="path='x.npz'; 'digits' ships with scikit-learn"):
    data.make_dataset(_config('digits', path='x.npz'), 'train', batch_size=1, seed=0)


def _tiny_tfds(data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Prepares 'md4_test_tiny_images' (4x4x3 PNG images, 3 classes) as ArrayRecord; returns the raw splits."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pil_image = pytest.importorskip('PIL.Image')
  rng = np.random.default_rng(0)
  raw = {split: (rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, n))
         for split, n in (('train', 12), ('test', 7))}

  def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    pil_image.fromarray(image).save(buffer, format='PNG')
    return buffer.getvalue()

  class Md4TestTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(4, 4, 3)), 'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in raw}

    def _generate_examples(self, split):
      for i, (image, label) in enumerate(zip(*raw[split])):
        yield i, {'image': png(image), 'label': int(label)}

  Md4TestTinyImages(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return raw


def test_tfds_array_record_source(tmp_path):
  raw = _tiny_tfds(str(tmp_path))
  tfds = pytest.importorskip('tensorflow_datasets')
  config = _config('cifar10', path=str(tmp_path), tfds_name='md4_test_tiny_images', image_shape=(4, 4, 3),
                   num_classes=3)
  assert data.dataset_info(config).data_shape == (4, 4, 3)
  train = data.make_dataset(config, 'train', batch_size=4, seed=1)
  batches = [next(train) for _ in range(3)]
  x, label = np.concatenate([b['x'] for b in batches]), np.concatenate([b['label'] for b in batches])
  order = np.lexsort(x.reshape(12, -1).T)
  expected_order = np.lexsort(raw['train'][0].reshape(12, -1).T)
  np.testing.assert_array_equal(x[order], raw['train'][0][expected_order])
  np.testing.assert_array_equal(label[order], raw['train'][1][expected_order])
  shards = [data.make_dataset(config, 'validation', batch_size=1, seed=0, shard_index=k, shard_count=3)
            for k in range(3)]
  got = np.stack([[next(s)['x'][0] for s in shards] for _ in range(2)]).reshape(6, 4, 4, 3)
  source = tfds.data_source('md4_test_tiny_images', split='test', data_dir=str(tmp_path), download=False)
  # 'validation' reads tfds 'test' in its stored order (TFDS shuffles when it prepares); the 7th is dropped.
  np.testing.assert_array_equal(got, [source[i]['image'] for i in range(6)])
  assert sorted(map(bytes, raw['test'][0])) == sorted(bytes(source[i]['image']) for i in range(7))
  config.image_shape = (8, 8, 3)
  with pytest.raises(ValueError, match=r'images have shape \(4, 4, 3\), but config.data.image_shape=\(8, 8, 3\)'):
    next(data.make_dataset(config, 'test', batch_size=2, seed=0))


def test_tfds_missing_data_names_the_build_command(tmp_path):
  config = _config('imagenet64', path=str(tmp_path))
  assert data.dataset_info(config).num_classes == 0
  with pytest.raises(data.DataNotFoundError, match=r"'downsampled_imagenet/64x64' is not prepared in .*tfds build "
                     'downsampled_imagenet/64x64 --file_format=array_record'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
