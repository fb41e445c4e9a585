"""Pure functions of arrays used by the models (pooling, normalisation)."""

from jaxdml.layers.pooling import POOLINGS, global_average_pool, global_max_pool, l2_normalize, pool

__all__ = ["POOLINGS", "global_average_pool", "global_max_pool", "l2_normalize", "pool"]
