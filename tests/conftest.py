"""Test set-up: 8 fake CPU devices so multi-device code is exercised on every machine."""
import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import tempfile  # noqa: E402

# Many tests compile the same small programs; a per-session persistent cache compiles each once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="md4_jax_test_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
