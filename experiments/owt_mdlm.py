"""MDLM's DiT on OpenWebText with MDLM's recipe (Sahoo et al. 2024; shared/reference/mdlm_dit.md), and the config of
converted MDLM / ReMDM / DUO checkpoints (`python -m md4_jax.convert --source mdlm ...` starts from it).

    python -m md4_jax.train --config experiments/owt_mdlm.py --workdir DIR --config.data.path=/data/owt
    python -m md4_jax.convert --source mdlm --input mdlm-owt/ --output DIR   # the released weights instead

12 blocks x 768, 12 heads, cond_dim 128, L = 1024, no time conditioning; AdamW lr 3e-4 with 2,500 linear warmup
steps then constant, batch 512, EMA 0.9999, dropout 0.1, 1M steps; log-linear noise (our 'linear' alpha_t with
eps = 1e-3; MDLM's is alpha_t = 1 - (1 - 1e-3) t). Headline: MDLM reports OWT validation perplexity <= 23.21.

The sampler is the exact ReMDM reproduction setting (sampling/config.py): ReMDM loop, eta = 0.02, t_on = 0.55,
t_off = 0.05, alpha_on = 0.9, T = 1024 on grid 'remdm' (alpha_t = 1 - t, eps = 0), top-p 0.9 by 'remdm_sort',
argmax noise removal, cached predictions (ReMDM Table 1: OWT MAUVE 0.403 at T = 1024).
"""

import ml_collections

from md4_jax.training import config_base
from md4_jax import sampling
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("owt")
  config.data.seq_len = 1024
  config.model.kind = "mdlm_dit"
  config.model.size = "small"
  config.model.network = ml_collections.ConfigDict(
      {"dropout": 0.1, "time_conditioning": False, "dtype": "bfloat16", "remat": False, "attention": "auto",
       "scan_layers": False})
  config.diffusion.update(schedule="linear", eps=1e-3)
  config.optim.update(lr=3e-4, warmup_steps=2500, min_lr_ratio=1.0, b2=0.999, weight_decay=0.0, ema_decay=0.9999)
  config.train.update(num_steps=1_000_000, batch_size=512, eval_every=10_000, eval_batch_size=512,
                      eval_batches=100, checkpoint_every=5_000, sample_every=50_000, log_every=500)
  config.sampler = sampling.default_config("remdm")
  config.sampler.update(grid="remdm", eps=0.0, top_p_rule="remdm_sort", cache=True)
  return config
