"""Test-session settings: one persistent XLA compilation cache for the tests and every process they start.

Most end-to-end tests compile the same tiny networks' train and evaluation steps, in this process or in the
``python -m jaxdml.main`` processes they start; a shared on-disk cache compiles each program once per session.
A cache hit loads the executable the compiler produced, so results are unchanged. Set
``JAX_COMPILATION_CACHE_DIR`` to choose the directory (or to an empty string to switch the cache off).
"""

from __future__ import annotations

import os
import tempfile

import jax

_DIRECTORY = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                   os.path.join(tempfile.gettempdir(), f"jaxdml-tests-xla-cache-{os.getuid()}"))
# Programs that compile faster than this are not worth a file.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
if _DIRECTORY:
    jax.config.update("jax_compilation_cache_dir", _DIRECTORY)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
