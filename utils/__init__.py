"""Shared helpers of the explainable pneumonia-detection notebook series (see docs/DESIGN.md)."""
__version__ = "0.1.0"
