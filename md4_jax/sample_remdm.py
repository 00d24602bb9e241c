"""Samples from a checkpoint with the ReMDM remasking sampler (`sampling.default_config("remdm")`: loop,
eta = 0.02, T = 1024, top-p 0.9; the model's schedule and eps from the experiment).

    python -m md4_jax.sample_remdm --workdir /tmp/md4_demo \\
        [--config.sampler.remdm.strategy=cap --config.sampler.remdm.eta=0.04 --config.sampler.num_steps=128 ...]

Same flags and outputs as md4_jax.sample_ancestral; only the default sampler differs. See md4_jax.sample_lib.
"""

from __future__ import annotations


from md4_jax import cli
from md4_jax import sample_lib


def main(argv: list[str]) -> int:
  return sample_lib.main(argv, sampler="remdm")


run = cli.entry(main)  # console entry point (md4-sample-remdm) and `python -m md4_jax.sample_remdm`


if __name__ == "__main__":
  run()
