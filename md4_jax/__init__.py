"""md4_jax: masked discrete diffusion (MD4 / GenMD4) and its samplers (ancestral, ReMDM) in JAX."""
