"""Secure aggregation by pairwise additive masking (Bonawitz et al. 2017), with SecAgg+'s sparse graph."""

from .errors import SecAggError
from .field import FieldSpec
from .graph import neighbour_graph, round_thresholds, share_holders
from .protocol import ClientSecrets, SecAggClient, SecAggConfig, SecAggServer
from .run import SecAggCost, measure_cost, run_round, secure_mean, secure_sum, secure_sum_deltas

__all__ = ["ClientSecrets", "FieldSpec", "SecAggClient", "SecAggConfig", "SecAggCost", "SecAggError", "SecAggServer",
           "measure_cost", "neighbour_graph", "round_thresholds", "run_round", "share_holders", "secure_sum",
           "secure_mean", "secure_sum_deltas"]
