"""Cross-cutting training concerns as Lightning callbacks."""

from zoo.callbacks.samples import SampleGrid

__all__ = ["SampleGrid"]
