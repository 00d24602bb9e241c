"""GenMD4's learned exponents w = softplus(w_raw) of a run: min / mean / max and the tokens with the largest and
smallest w (md4.md §2.9; md4 logs power_min / power_avg / power_max).

    python benchmarks/genmd4_exponents.py --config experiments/kjv_tiny.py --workdir /tmp/kjv_genmd4 [--step S]

Reads the EMA parameters of the checkpoint (the ones the evaluation uses). For character data ('chars', 'text8')
tokens are shown as characters (space as '_') with their share of the training split; otherwise as ids.
A token with a larger w stays unmasked longer (1 - alpha_{t,v} = (1 - eps) t^{w_v}), so it is unmasked earlier in
generation.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from md4_jax.training import config_base, experiment  # noqa: E402
from md4_jax.data import text_corpus  # noqa: E402


def token_labels(config, vocab_size: int) -> tuple[list[str], np.ndarray | None]:
  """Token names and (character data) their frequency in the training split."""
  if config.data.name not in ("chars", "text8"):
    return [str(v) for v in range(vocab_size)], None
  chars = text_corpus.decode_chars(np.arange(vocab_size)).replace(" ", "_")
  ids = text_corpus.load_corpus(config.data.path, "see ../shared/data/README.md")
  train = ids[: int(len(ids) * config.data.train_fraction)]
  return list(chars), np.bincount(train, minlength=vocab_size) / len(train)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="the experiment file the run was trained with")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--top", type=int, default=5, help="tokens listed at each end")
  args = parser.parse_args()
  config = config_base.load_experiment(os.path.abspath(args.config))
  config.diffusion.objective = "genmd4"
  try:
    restored = experiment.restore_ema(config, args.workdir, args.step)
  except ValueError as error:
    sys.exit(f"error: {error}")
  w = np.asarray(jax.nn.softplus(restored.params["w_raw"]), np.float64)
  labels, freq = token_labels(config, w.shape[0])
  order = np.argsort(w)
  show = lambda v: f"'{labels[v]}' {w[v]:.3f}" + ("" if freq is None else f" ({100 * freq[v]:.2f}%)")
  print(f"step {restored.step}: w min {w.min():.3f} / mean {w.mean():.3f} / max {w.max():.3f} over V={w.shape[0]}")
  print("largest w: " + ", ".join(show(v) for v in order[::-1][:args.top]))
  print("smallest w: " + ", ".join(show(v) for v in order[:args.top]))
  if freq is not None:
    corr = np.corrcoef(np.log(freq + 1e-12), w)[0, 1]
    print(f"correlation of w with log training frequency: {corr:+.3f}")


if __name__ == "__main__":
  main()
