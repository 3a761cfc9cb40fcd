"""Refit training: data loading, transfer-learning strategies, evaluation, registry, ONNX export.

Importing this package does no work; the heavy modules (torch, transformers, bentoml) are
imported by the submodules that need them.
"""
