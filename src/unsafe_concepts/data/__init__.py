"""Datasets of the UnsafeConcepts protocol: loaders, splits, perception options, context questions.

Everybody else uses ``load_benchmark(spec, safe=None, context_file=None)`` and ``blank_image()``;
see docs/data.md for the layouts and the split algorithm.
"""
from unsafe_concepts.data.benchmark import Benchmark, blank_image, load_benchmark
from unsafe_concepts.data.records import SAFE, SAFE_CATEGORY, UNSAFE, ImageRecord, load_rgb

__all__ = ["Benchmark", "ImageRecord", "SAFE", "SAFE_CATEGORY", "UNSAFE", "blank_image", "load_benchmark", "load_rgb"]
