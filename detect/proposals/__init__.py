"""Region proposals for R-CNN and Fast R-CNN: selective search, a per-split proposal cache,
and proposal-recall metrics (which also evaluate RPN proposals)."""
from detect.proposals.search import MODES, Strategy, selective_search

__all__ = ["MODES", "Strategy", "selective_search"]
