"""Frechet distance between Gaussian fits of image features (FID's formula), with an offline feature network.

FD(N(mu_1, S_1), N(mu_2, S_2)) = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}), in float64, with
tr (S_1 S_2)^{1/2} = tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2} from two symmetric eigendecompositions (stable for
singular covariances, no complex parts to discard).

The default feature network is NOT Inception-v3 (which needs downloaded weights): it is a fixed random convolutional
network, `random_conv_features`, whose weights come from numpy's PCG64 with seed 0 (He-normal), so it is
deterministic and available offline. Random-network features separate image distributions, but the numbers are
not comparable to Inception FID (MD4 Tab. 6, ReMDM Tab. 2), nor across feature networks or image sizes: compare
FIDs of this module only with each other, on the same data.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_WIDTHS = (32, 64, 128)  # conv channels; each layer 3x3, the 2nd and 3rd with stride 2
FEATURE_SEED = 0


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) in float64 of features [N, D]; the covariance with 1 / (N - 1)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2; got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative rounding-error eigenvalues set to 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
  """Frechet (2-Wasserstein squared) distance between N(mu_1, sigma_1) and N(mu_2, sigma_2), float64."""
  mu_1, mu_2 = np.asarray(mu_1, np.float64), np.asarray(mu_2, np.float64)
  sigma_1, sigma_2 = np.asarray(sigma_1, np.float64), np.asarray(sigma_2, np.float64)
  d = mu_1.shape[0]
  if mu_1.shape != (d,) or mu_2.shape != (d,) or sigma_1.shape != (d, d) or sigma_2.shape != (d, d):
    raise ValueError(f"need mu [D] and sigma [D, D] of one D; got {mu_1.shape}, {sigma_1.shape}, {mu_2.shape}, "
                     f"{sigma_2.shape}")
  root_1 = _psd_sqrt(sigma_1)
  cross = np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1)  # eigenvalues of S_1 S_2 (similar matrices)
  trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
  return float(np.sum((mu_1 - mu_2) ** 2) + np.trace(sigma_1) + np.trace(sigma_2) - 2.0 * trace_sqrt)


@functools.lru_cache(maxsize=4)
def _conv_weights(num_channels: int) -> tuple[np.ndarray, ...]:
  """He-normal 3x3 kernels [3, 3, C_in, C_out] from PCG64(FEATURE_SEED), one set per input channel count."""
  rng = np.random.Generator(np.random.PCG64(FEATURE_SEED))
  widths = (num_channels,) + FEATURE_WIDTHS
  return tuple((rng.standard_normal((3, 3, c_in, c_out)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
               for c_in, c_out in zip(widths[:-1], widths[1:]))


@jax.jit
def _conv_net(images: jax.Array, weights: tuple[jax.Array, ...]) -> jax.Array:
  """[B, H, W, C] float in [-1, 1] -> [B, FEATURE_WIDTHS[-1]]: ReLU convs, then the spatial mean."""
  h = images
  for index, kernel in enumerate(weights):
    stride = 1 if index == 0 else 2
    h = jax.lax.conv_general_dilated(h, kernel, (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)  # no TF32: the same features on GPU
    h = jax.nn.relu(h)
  return jnp.mean(h, axis=(1, 2))


def random_conv_features(images, batch_size: int = 256) -> np.ndarray:
  """Features [B, 128] of images [B, H, W, C] with values in [0, 255] (the codebase's pixel tokens), from the
  fixed random network of this module's docstring; images are scaled to [-1, 1]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"images must be [B, H, W, C] with B >= 1; got shape {images.shape}")
  if images.min() < 0 or images.max() > 255:
    raise ValueError(f"pixel values must lie in [0, 255]; got [{images.min()}, {images.max()}]")
  weights = tuple(jnp.asarray(w) for w in _conv_weights(images.shape[-1]))
  return np.concatenate([np.asarray(_conv_net(jnp.asarray(images[i:i + batch_size], jnp.float32) / 127.5 - 1.0,
                                              weights))
                         for i in range(0, images.shape[0], batch_size)])


def fid(images_a, images_b, feature_fn: Callable[[np.ndarray], np.ndarray] = random_conv_features) -> float:
  """Frechet distance between the feature Gaussians of two image sets [N, H, W, C] and [M, H, W, C].

  With the default feature_fn (a random conv net, not Inception) the value is not comparable to published FIDs.
  """
  return frechet_distance(*gaussian_fit(feature_fn(images_a)), *gaussian_fit(feature_fn(images_b)))
