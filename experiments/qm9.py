"""A tiny MD4 on QM9 SMILES (L = 32 regex tokens, label = ring count >= its 90th percentile); CPU-sized.

    python -m md4_jax.train --config experiments/qm9.py --workdir /tmp/md4_qm9

Needs `pip install qm9pack rdkit` (QM9 ships inside qm9pack; properties are computed once and cached). Labels are
dropped at rate 0.1 in training (classifier-free guidance, md4_jax/guidance.py); `--config.data.label=qed` targets
QED instead, `--config.data.label=none` trains unconditionally. ReMDM's QM9 runs use a larger DiT (remdm.md §3.4).
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("qm9")
  config.model.size = "tiny"  # 4 layers, 4 heads, width 128
  config.model.label_dropout = 0.1
  config.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.99)
  config.train.update(num_steps=3000, batch_size=64, eval_every=1000, eval_batch_size=256, eval_batches=4,
                      checkpoint_every=1000, sample_every=3000, num_samples=8, log_every=100)
  config.sampler.num_steps = 64
  return config
