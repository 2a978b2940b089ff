"""Memory of a training step: measured in a fresh process, estimated analytically, and planned per device."""

from pocketlearn.memory.estimate import Estimate, estimate, estimate_inference
from pocketlearn.memory.measure import Measurement, measure
from pocketlearn.memory.planner import Plan, PlanRow, plan

__all__ = ["Estimate", "Measurement", "Plan", "PlanRow", "estimate", "estimate_inference", "measure", "plan"]
