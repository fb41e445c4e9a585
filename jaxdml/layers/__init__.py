"""Pure functions of arrays used by the models (pooling, GSP, XBML's prototype assignment, k-center, normalisation)."""

from jaxdml.layers.gsp import gsp_pool, gsp_weights, lipschitz_normalize, prototype_costs
from jaxdml.layers.kcenter import greedy_k_center
from jaxdml.layers.pooling import POOLINGS, global_average_pool, global_max_pool, l2_normalize, pool
from jaxdml.layers.xbml import image_prototypes, prototype_assignment, prototype_coefficients

__all__ = ["POOLINGS", "global_average_pool", "global_max_pool", "greedy_k_center", "gsp_pool", "gsp_weights",
           "image_prototypes", "l2_normalize", "lipschitz_normalize", "pool", "prototype_assignment",
           "prototype_coefficients", "prototype_costs"]
