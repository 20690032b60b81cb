"""Linear SVMs with hard negative mining, and ridge regression, for R-CNN's phases 2 and 3.

The SVM solves ``min_w 1/2 |w|^2 + sum_i C_i max(0, 1 - y_i w.x_i)`` (hinge loss, L2
regularisation, the bias as a constant feature) by dual coordinate descent (Hsieh et al. 2008,
the algorithm of liblinear, which the R-CNN authors used), compiled with numba.

Hard negative mining (Felzenszwalb et al. 2010; R-CNN section 2.3): the SVM is trained on all
positives and a cache of negatives; all negatives are then scored, those inside the margin
(score > -1) that are not cached yet join the cache, highest score first, the easy ones
(score < -1.2) leave it, and the SVM is retrained, for a few passes or until none is added.
"""
from __future__ import annotations

import logging
from typing import Dict, Tuple

import numpy as np
from numba import njit

LOG = logging.getLogger(__name__)
HARD_THRESH = -1.0 - 1e-4  # the R-CNN code's thresholds
EVICT_THRESH = -1.2
BIAS_FEATURE = 10.0  # liblinear's B: the bias is learned as the weight of this constant feature


@njit(cache=True, nogil=True)
def _dual_cd(x, y, cost, max_iter, tol, seed):
    n, d = x.shape
    w = np.zeros(d, np.float64)
    alpha = np.zeros(n, np.float64)
    qd = np.empty(n, np.float64)
    for i in range(n):
        acc = 0.0
        for k in range(d):
            acc += x[i, k] * x[i, k]
        qd[i] = acc if acc > 0 else 1.0
    order = np.arange(n)
    np.random.seed(seed)
    iterations = 0
    for it in range(max_iter):
        iterations = it + 1
        np.random.shuffle(order)
        worst = 0.0
        for i in order:
            dot = 0.0
            for k in range(d):
                dot += w[k] * x[i, k]
            g = y[i] * dot - 1.0
            pg = g
            if alpha[i] <= 0.0:
                pg = min(g, 0.0)
            elif alpha[i] >= cost[i]:
                pg = max(g, 0.0)
            if abs(pg) > worst:
                worst = abs(pg)
            if pg != 0.0:
                old = alpha[i]
                new = min(max(old - g / qd[i], 0.0), cost[i])
                alpha[i] = new
                step = (new - old) * y[i]
                for k in range(d):
                    w[k] += step * x[i, k]
        if worst < tol:
            break
    return w, iterations


def train_linear_svm(x: np.ndarray, y: np.ndarray, c: float = 1e-3, positive_weight: float = 2.0,
                     max_iter: int = 1000, tol: float = 1e-3, seed: int = 0) -> Tuple[np.ndarray, float]:
    """``(w (D,), b)`` of a linear SVM on ``x (N, D)``, ``y (N,)`` in {-1, +1}; positives cost
    ``c * positive_weight`` per unit of hinge loss, negatives ``c``."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if not np.all(np.isin(y, (-1.0, 1.0))):
        raise ValueError("labels must be -1 or +1")
    xb = np.concatenate([x, np.full((len(x), 1), BIAS_FEATURE)], axis=1)
    cost = np.where(y > 0, c * positive_weight, c)
    w, _ = _dual_cd(np.ascontiguousarray(xb), y, cost, max_iter, tol, seed)
    return w[:-1].astype(np.float32), float(w[-1] * BIAS_FEATURE)


def mine_hard_negatives(scores: np.ndarray, in_cache: np.ndarray, thresh: float = HARD_THRESH,
                        limit: int = 0) -> np.ndarray:
    """Indices of negatives not in the cache whose score exceeds ``thresh`` (they violate the
    margin), highest score first, at most ``limit`` of them (0: no limit)."""
    candidates = np.flatnonzero((scores > thresh) & ~in_cache)
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    return candidates[:limit] if limit else candidates


def train_svm_with_hard_negatives(positives: np.ndarray, negatives: np.ndarray, c: float = 1e-3,
                                  positive_weight: float = 2.0, passes: int = 3, initial_negatives: int = 5000,
                                  max_cache: int = 50000, seed: int = 0) -> Dict:
    """SVM on ``positives (P, D)`` against ``negatives (N, D)`` with hard negative mining.

    Returns ``{"weight", "bias", "passes": [{"cache", "added", "evicted", "violations"}]}``.
    """
    rng = np.random.default_rng(seed)
    n = len(negatives)
    in_cache = np.zeros(n, bool)
    if n:
        in_cache[rng.choice(n, size=min(initial_negatives, n), replace=False)] = True
    history = []
    w, b = np.zeros(positives.shape[1], np.float32), 0.0
    for p in range(passes + 1):
        idx = np.flatnonzero(in_cache)
        x = np.concatenate([positives, negatives[idx]])
        y = np.r_[np.ones(len(positives)), -np.ones(len(idx))]
        w, b = train_linear_svm(x, y, c, positive_weight, seed=seed + p)
        if p == passes or n == 0:
            break
        scores = negatives @ w + b
        hard = mine_hard_negatives(scores, in_cache, limit=max(0, max_cache - int(in_cache.sum())))
        easy = in_cache & (scores < EVICT_THRESH)
        history.append({"cache": int(in_cache.sum()), "added": int(len(hard)), "evicted": int(easy.sum()),
                        "violations": int(((scores > HARD_THRESH) & ~in_cache).sum())})
        if len(hard) == 0:
            break
        in_cache[hard] = True
        in_cache[easy] = False
    return {"weight": w, "bias": b, "passes": history}


def ridge_regression(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """``W (D + 1, K)`` minimising ``|[x, 1] W - y|^2 + lam |W|^2`` (closed form, float64)."""
    xb = np.concatenate([np.asarray(x, np.float64), np.ones((len(x), 1))], axis=1)
    a = xb.T @ xb + lam * np.eye(xb.shape[1])
    return np.linalg.solve(a, xb.T @ np.asarray(y, np.float64)).astype(np.float32)
