"""Cross-cutting training concerns as Lightning callbacks."""

from zoo.callbacks.checkpoint import FinalCheckpoint
from zoo.callbacks.exception import CheckpointOnException
from zoo.callbacks.metrics import MetricsCallback
from zoo.callbacks.samples import SampleGrid

__all__ = ["CheckpointOnException", "FinalCheckpoint", "MetricsCallback", "SampleGrid"]
