"""Metric-learning losses, miners and the training objective built from a config.

Losses are pure functions (``jaxdml.losses.pair``, ``jaxdml.losses.proxy``), miners return masks
(``jaxdml.losses.miners``); ``LOSSES`` / ``MINERS`` (``jaxdml.losses.registry``) map the names experiment files
use to them, and :func:`make_objective` composes the configured terms, miner, cross-batch memory and ZSR.
"""

from jaxdml.losses.objective import XBM_MODES, Objective, make_objective
from jaxdml.losses.pair import contrastive_loss, multi_similarity_loss
from jaxdml.losses.registry import LOSSES, MINERS, LossSpec, make_loss
from jaxdml.losses.zsr import zero_shot_loss

__all__ = ["LOSSES", "MINERS", "XBM_MODES", "LossSpec", "Objective", "contrastive_loss", "make_loss", "make_objective",
           "multi_similarity_loss", "zero_shot_loss"]
