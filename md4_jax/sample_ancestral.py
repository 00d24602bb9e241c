"""Samples from a checkpoint with the MD4 ancestral sampler (the experiment's own `config.sampler`).

    python -m md4_jax.sample_ancestral --workdir /tmp/md4_demo \\
        [--num_samples=16 --batch_size=0 --seed=0 --step=N --output=PATH --prefix_file=F | --infill_file=F \\
         --label=K --config.sampler.num_steps=256 ...]

Writes PATH.txt (one sample per line) + PATH.jsonl (token ids), or PATH.png for images (md4_jax.generate).
The run's config comes from WORKDIR/config.json; --config FILE is still accepted and checked against it.
"""

from __future__ import annotations


from md4_jax import cli
from md4_jax import sample_lib


def main(argv: list[str]) -> int:
  return sample_lib.main(argv, sampler="ancestral")


run = cli.entry(main)  # console entry point (md4-sample-ancestral) and `python -m md4_jax.sample_ancestral`


if __name__ == "__main__":
  run()
