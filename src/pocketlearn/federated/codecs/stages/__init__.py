"""Codec stages, one file each: every stage turns a frame of named arrays into a smaller one and back.

Chained, e.g. top-k then 8-bit. Quantizers round stochastically and without bias (E[decoded] = input); top-k and
sign are biased (``Stage.biased``) and want error feedback. Randomness comes from a generator the caller seeds
per (round, client), so runs are reproducible and resumable. :mod:`.registry` maps each stage's name to it.
"""

from pocketlearn.federated.codecs.stages.base import Stage
from pocketlearn.federated.codecs.stages.half import BFloat16, Float16
from pocketlearn.federated.codecs.stages.quantize import Quantize
from pocketlearn.federated.codecs.stages.random_subset import RandomSubset
from pocketlearn.federated.codecs.stages.registry import STAGES, parse_stage, stage_forms
from pocketlearn.federated.codecs.stages.rotate import Rotate
from pocketlearn.federated.codecs.stages.rows import Rows
from pocketlearn.federated.codecs.stages.sign import Sign
from pocketlearn.federated.codecs.stages.topk import TopK

__all__ = ["STAGES", "BFloat16", "Float16", "Quantize", "RandomSubset", "Rotate", "Rows", "Sign", "Stage", "TopK",
           "parse_stage", "stage_forms"]
