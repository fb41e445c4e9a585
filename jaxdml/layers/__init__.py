"""Pure functions of arrays used by the models (pooling, GSP, XBML's prototype assignment, k-center, normalisation)."""

from jaxdml.layers.gsp import gsp_pool, gsp_weights, lipschitz_normalize, prototype_costs
from jaxdml.layers.kcenter import fill_memory, greedy_k_center, k_center_from_memory
from jaxdml.layers.pooling import POOLINGS, global_average_pool, global_max_pool, l2_normalize, pool
from jaxdml.layers.pooling_baselines import (
    crow_pool,
    crow_weights,
    gem_pool,
    netvlad_pool,
    otp_pool,
    row_convolution,
    scaled_gram,
    sinkhorn_plan,
    weldon_pool,
)
from jaxdml.layers.xbml import image_prototypes, prototype_assignment, prototype_coefficients

__all__ = ["POOLINGS", "crow_pool", "crow_weights", "fill_memory", "gem_pool", "global_average_pool",
           "global_max_pool", "greedy_k_center", "gsp_pool", "gsp_weights", "image_prototypes", "k_center_from_memory",
           "l2_normalize", "lipschitz_normalize", "netvlad_pool", "otp_pool", "pool", "prototype_assignment",
           "prototype_coefficients", "prototype_costs", "row_convolution", "scaled_gram", "sinkhorn_plan",
           "weldon_pool"]
