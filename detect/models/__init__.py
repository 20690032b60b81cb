"""Detectors and their parts: backbones, anchors, RPN, RoI head, and the builder."""
from detect.models.registry import build_model

__all__ = ["build_model"]
