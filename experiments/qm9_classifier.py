"""A noisy QM9 property classifier p(y | z_t, t) for classifier-based guidance (D-CBG, md4_jax/guidance.py).

    python -m md4_jax.train --config experiments/qm9_classifier.py --workdir /tmp/qm9_classifier

Trained by the same loop on the same data as experiments/qm9.py: each molecule masked as MD4 masks it at a random
t (linear schedule), the label (ring count >= its 90th percentile; `--config.data.label=qed` for QED) predicted by
a micro transformer (1 layer, width 32) with adaLN time conditioning and mean-pooled class logits. Small on
purpose: full D-CBG evaluates it on every candidate token (V = 31 sequences) of every position where a token is
drawn (md4_jax.guidance.cbg_guide). Its validation "bits per token" is the label's cross-entropy in bits.
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("qm9")
  config.diffusion.objective = "classifier"
  config.model.size = "micro"
  config.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.99)
  config.train.update(num_steps=1500, batch_size=64, eval_every=500, eval_batch_size=256, eval_batches=4,
                      checkpoint_every=500, sample_every=0, log_every=100)
  return config
