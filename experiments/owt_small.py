"""MD4-S on OpenWebText (paper: validation perplexity <= 22.13): 12 layers, 12 heads, width 768, L=1024.

    python -m md4_jax.data.prepare_owt ...   # once: tokenised ArrayRecord shards (see README)
    python -m md4_jax.train --config experiments/owt_small.py --workdir DIR --config.data.path=/data/owt

Paper App. J: as text8 but dropout 0.02; batch 512, lr 3e-4, warmup 2000, weight decay 0.03, 1M steps, EMA 0.9999.
GPT-2 BPE: V = 50257, mask id 50257.
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("owt")
  config.data.seq_len = 1024
  config.model.size = "small"
  config.model.network.update(dropout=0.02, dtype="bfloat16")
  config.optim.update(lr=3e-4, warmup_steps=2000, weight_decay=0.03, b2=0.999, ema_decay=0.9999)
  config.train.update(num_steps=1_000_000, batch_size=512, eval_every=10_000, eval_batch_size=512,
                      eval_batches=100, checkpoint_every=5_000, sample_every=50_000, log_every=500)
  config.sampler.num_steps = 1000
  return config
