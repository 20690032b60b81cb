"""CPU kernels for the two box operations that dominate Faster R-CNN outside its backbone (numba,
single thread, float32): NMS and RoI align at inference, RoI align's backward in training; and
Soft-NMS, which no library has (``soft_nms_gaussian``: the tensor version in ``detect.ops.nms`` is a
Python loop of ~10 small ops per kept box, ~15 ms an image on this project's CPU).

Both reproduce torchvision's CPU operators bit for bit (same float32 expressions in the same order;
tests hold them to it) and differ only in how the work is organised:

- ``greedy_nms`` visits boxes best first and compares each with the boxes already kept (of the same
  label) instead of suppressing forward over all remaining boxes, so it can stop as soon as
  ``max_keep`` boxes are kept: the RPN keeps 300 of ~3000 candidates and the detector 100.
  ``torchvision.ops.nms`` has no such limit and always finishes the whole list.
- ``roi_align_nhwc`` reads a channels-last map, so the four bilinear neighbours of a sample point
  are four contiguous rows of C floats and the channel loop is vectorised; torchvision's CPU kernel
  walks a channels-first map one scalar at a time. ``roi_align_nhwc_backward`` does the same for the
  gradient (torchvision's took ~10% of a ResNet-50-FPN training step here).

And GroupNorm over channels-last maps (``group_norm_nhwc`` and its backward, at the end: parallel
over both cores, float64 sums), whose forward and backward PyTorch's CPU kernel runs about 2x slower
than on NCHW maps; not bit for bit (see :mod:`detect.ops.norm`).
"""
import numpy as np
from numba import njit, prange

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


@njit(cache=True, nogil=True, inline="always")
def _iou(boxes, areas, a, b):
    """IoU of ``boxes[a]`` and ``boxes[b]`` in float32 as torchvision computes it: inter / (area of a +
    area of b - inter), ``a`` first (the order its sums are taken in)."""
    w = max(_ZERO, min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0]))
    h = max(_ZERO, min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1]))
    inter = w * h
    return inter / (areas[a] + areas[b] - inter)


@njit(cache=True, nogil=True)
def greedy_nms(boxes, order, labels, iou_threshold, max_keep):
    """Greedy NMS over ``boxes (N, 4) float32`` taken in ``order`` (best first).

    A box is kept unless a kept box of the same ``labels`` value overlaps it with IoU above
    ``iou_threshold`` (float64, compared as torchvision does). Returns the kept indices, best first,
    at most ``max_keep`` of them.
    """
    n = order.shape[0]
    keep = np.empty(min(n, max_keep), np.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = 0
    for t in range(n):
        if kept == max_keep:
            break
        i = order[t]
        suppressed = False
        for s in range(kept):
            j = keep[s]
            if labels[j] != labels[i]:
                continue
            if _iou(boxes, areas, j, i) > iou_threshold:  # the kept (earlier) box first, as torchvision
                suppressed = True
                break
        if not suppressed:
            keep[kept] = i
            kept += 1
    return keep[:kept]


@njit(cache=True, nogil=True)
def soft_nms_gaussian(boxes, scores, labels, sigma, score_threshold, max_keep):
    """Gaussian Soft-NMS over ``boxes (N, 4) float32`` and ``scores (N,) float32``.

    The same steps as the tensor version, :func:`detect.ops.nms.soft_nms_reference`: take
    the best live box (the first of equal scores), then multiply the score of every live box of its
    label by ``exp(-IoU^2 / sigma)`` and drop those at or below ``score_threshold``; IoU as
    torchvision's ``box_iou`` computes it in float32. Scores can differ from the reference's in the
    last bit (``exp`` of another maths library). Returns the kept indices and their decayed scores.
    """
    n = boxes.shape[0]
    s = scores.copy()
    alive = s > score_threshold
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sigma32 = np.float32(sigma)
    size = min(n, max_keep)
    keep = np.empty(size, np.int64)
    kept_scores = np.empty(size, np.float32)
    kept = 0
    while kept < size:
        best = -1
        best_score = np.float32(-1.0)
        for i in range(n):
            if alive[i] and s[i] > best_score:
                best, best_score = i, s[i]
        if best < 0:
            break
        keep[kept] = best
        kept_scores[kept] = best_score
        kept += 1
        alive[best] = False
        for i in range(n):
            if not alive[i] or labels[i] != labels[best]:
                continue
            iou = _iou(boxes, areas, best, i)
            s[i] = s[i] * np.exp(-(iou * iou) / sigma32)
            if not s[i] > score_threshold:
                alive[i] = False
    return keep[:kept], kept_scores[:kept]


@njit(cache=True, nogil=True, inline="always")
def _roi_grid(roi, spatial_scale, aligned, pooled_h, pooled_w, sampling_ratio):
    """One RoI's start corner on the map, bin sizes and samples per bin side, as torchvision computes them."""
    offset = _HALF if aligned else _ZERO
    start_w = roi[1] * spatial_scale - offset
    start_h = roi[2] * spatial_scale - offset
    roi_w = roi[3] * spatial_scale - offset - start_w
    roi_h = roi[4] * spatial_scale - offset - start_h
    if not aligned:
        roi_w = max(roi_w, _ONE)
        roi_h = max(roi_h, _ONE)
    bin_h = roi_h / np.float32(pooled_h)
    bin_w = roi_w / np.float32(pooled_w)
    grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / np.float32(pooled_h)))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / np.float32(pooled_w)))
    return start_h, start_w, bin_h, bin_w, grid_h, grid_w


@njit(cache=True, nogil=True, inline="always")
def _sample_point(start, bin_size, index, sub, grid):
    """Coordinate of sample ``sub`` of ``grid`` in bin ``index`` (torchvision's float32 expression)."""
    return start + np.float32(index) * bin_size + np.float32(sub + 0.5) * bin_size / np.float32(grid)


@njit(cache=True, nogil=True, inline="always")
def _bilinear(y, x, height, width):
    """torchvision's bilinear corners and weights of point ``(y, x)`` on a ``height x width`` map.

    Returns ``(inside, y_low, y_high, x_low, x_high, w1, w2, w3, w4)``; a point outside
    ``[-1, size]`` on either axis is not inside and contributes nothing.
    """
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return False, 0, 0, 0, 0, _ZERO, _ZERO, _ZERO, _ZERO
    yy = max(y, _ZERO)
    xx = max(x, _ZERO)
    y_low = int(yy)
    x_low = int(xx)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        yy = np.float32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        xx = np.float32(x_low)
    else:
        x_high = x_low + 1
    ly = yy - np.float32(y_low)
    lx = xx - np.float32(x_low)
    hy = _ONE - ly
    hx = _ONE - lx
    return True, y_low, y_high, x_low, x_high, hy * hx, hy * lx, ly * hx, ly * lx


@njit(cache=True, nogil=True)
def roi_align_nhwc(feature, rois, out, out_index, spatial_scale, sampling_ratio, aligned):
    """RoI align of ``rois (K, 5) float32`` (batch index, x1, y1, x2, y2 in image pixels) from
    ``feature (B, H, W, C) float32`` into ``out[out_index[k]]`` of ``out (R, C, PH, PW)``.

    torchvision's ``roi_align`` semantics: ``spatial_scale`` (float32) maps image pixels to the map,
    ``aligned`` shifts by half a cell, ``sampling_ratio`` samples per bin side (0: adaptive,
    ``ceil(roi side / bins)``), samples outside ``[-1, size]`` contribute zero, the bin value is the
    mean of its samples.
    """
    height, width, channels = feature.shape[1], feature.shape[2], feature.shape[3]
    pooled_h, pooled_w = out.shape[2], out.shape[3]
    bins = np.empty((pooled_h * pooled_w, channels), np.float32)  # one RoI, channels last
    for k in range(rois.shape[0]):
        f = feature[int(rois[k, 0])]
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _roi_grid(rois[k], spatial_scale, aligned, pooled_h,
                                                                   pooled_w, sampling_ratio)
        count = np.float32(max(grid_h * grid_w, 1))
        r = out_index[k]
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                acc = bins[ph * pooled_w + pw]
                acc[:] = _ZERO
                for iy in range(grid_h):
                    y = _sample_point(start_h, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        x = _sample_point(start_w, bin_w, pw, ix, grid_w)
                        inside, y_low, y_high, x_low, x_high, w1, w2, w3, w4 = _bilinear(y, x, height, width)
                        if not inside:
                            continue  # torchvision adds zero-weighted terms here
                        a, b, c, d = f[y_low, x_low], f[y_low, x_high], f[y_high, x_low], f[y_high, x_high]
                        for ch in range(channels):
                            acc[ch] += w1 * a[ch] + w2 * b[ch] + w3 * c[ch] + w4 * d[ch]
                for ch in range(channels):
                    acc[ch] = acc[ch] / count
        # transposed into the channels-first output once per RoI (contiguous writes)
        o = out[r].reshape(channels, pooled_h * pooled_w)
        for ch in range(channels):
            for q in range(pooled_h * pooled_w):
                o[ch, q] = bins[q, ch]


@njit(cache=True, nogil=True)
def roi_align_nhwc_backward(grad_out, rois, grad_in, spatial_scale, sampling_ratio, aligned):
    """Gradient of :func:`roi_align_nhwc`: adds into ``grad_in (B, H, W, C) float32`` what
    ``grad_out (K, PH, PW, C) float32`` (channels last) sends back through each RoI's bilinear samples.

    torchvision's CPU backward walks (RoI, channel, bin, sample) one scalar at a time; here the channel
    loop is innermost. For any one channel the additions into a cell come in the same order
    (RoI, bin, sample, corner) with the same float32 expressions, so the result is equal bit for bit.
    """
    height, width, channels = grad_in.shape[1], grad_in.shape[2], grad_in.shape[3]
    pooled_h, pooled_w = grad_out.shape[1], grad_out.shape[2]
    for k in range(rois.shape[0]):
        g_in = grad_in[int(rois[k, 0])]
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _roi_grid(rois[k], spatial_scale, aligned, pooled_h,
                                                                   pooled_w, sampling_ratio)
        count = np.float32(grid_h * grid_w)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                g = grad_out[k, ph, pw]
                for iy in range(grid_h):
                    y = _sample_point(start_h, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        x = _sample_point(start_w, bin_w, pw, ix, grid_w)
                        inside, y_low, y_high, x_low, x_high, w1, w2, w3, w4 = _bilinear(y, x, height, width)
                        if not inside:
                            continue  # torchvision: zero weights, nothing added
                        a, b, c, d = g_in[y_low, x_low], g_in[y_low, x_high], g_in[y_high, x_low], g_in[y_high, x_high]
                        for ch in range(channels):
                            v = g[ch]
                            a[ch] += v * w1 / count
                            b[ch] += v * w2 / count
                            c[ch] += v * w3 / count
                            d[ch] += v * w4 / count


@njit(cache=True, nogil=True, inline="always")
def _round_half_away(x):
    """C's ``std::round`` (halves away from zero), which torchvision's RoI max pool uses."""
    return np.floor(x + _HALF) if x >= _ZERO else -np.floor(-x + _HALF)


@njit(cache=True, nogil=True)
def roi_pool_nhwc(feature, rois, out, argmax, out_index, spatial_scale):
    """RoI max pooling (Fast R-CNN) of ``rois (K, 5) float32`` from ``feature (B, H, W, C) float32``
    into ``out[out_index[k]]`` of ``out (R, C, PH, PW)``, the winning cell ``h * W + w`` (-1: empty
    bin) into ``argmax (K, C, PH, PW)`` int32.

    torchvision's ``roi_pool``: the RoI's corners rounded to map cells (half away from zero), at
    least one cell a side, bin ``p`` spanning cells ``[floor(p * size), ceil((p + 1) * size))`` of it
    clipped to the map, an empty bin giving 0, the first maximum in row-major order winning. The
    channel loop is innermost and branch-free (a select), so it vectorises.
    """
    height, width, channels = feature.shape[1], feature.shape[2], feature.shape[3]
    pooled_h, pooled_w = out.shape[2], out.shape[3]
    bins = pooled_h * pooled_w
    best = np.empty((bins, channels), np.float32)  # one RoI, channels last
    where = np.empty((bins, channels), np.int32)
    lowest = np.float32(-3.4028234663852886e38)  # -FLT_MAX
    for k in range(rois.shape[0]):
        f = feature[int(rois[k, 0])]
        start_w = int(_round_half_away(rois[k, 1] * spatial_scale))
        start_h = int(_round_half_away(rois[k, 2] * spatial_scale))
        end_w = int(_round_half_away(rois[k, 3] * spatial_scale))
        end_h = int(_round_half_away(rois[k, 4] * spatial_scale))
        bin_h = np.float32(max(end_h - start_h + 1, 1)) / np.float32(pooled_h)
        bin_w = np.float32(max(end_w - start_w + 1, 1)) / np.float32(pooled_w)
        for ph in range(pooled_h):
            h0 = min(max(int(np.floor(np.float32(ph) * bin_h)) + start_h, 0), height)
            h1 = min(max(int(np.ceil(np.float32(ph + 1) * bin_h)) + start_h, 0), height)
            for pw in range(pooled_w):
                w0 = min(max(int(np.floor(np.float32(pw) * bin_w)) + start_w, 0), width)
                w1 = min(max(int(np.ceil(np.float32(pw + 1) * bin_w)) + start_w, 0), width)
                b, i = best[ph * pooled_w + pw], where[ph * pooled_w + pw]
                b[:] = _ZERO if h1 <= h0 or w1 <= w0 else lowest
                i[:] = -1
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        row = f[h, w]
                        cell = np.int32(h * width + w)
                        for ch in range(channels):
                            v = row[ch]
                            better = v > b[ch]
                            b[ch] = v if better else b[ch]
                            i[ch] = cell if better else i[ch]
        # transposed into the channels-first outputs once per RoI (contiguous writes)
        o = out[out_index[k]].reshape(channels, bins)
        a = argmax[k].reshape(channels, bins)
        for ch in range(channels):
            for q in range(bins):
                o[ch, q] = best[q, ch]
                a[ch, q] = where[q, ch]


@njit(cache=True, nogil=True)
def roi_pool_backward(grad_out, rois, argmax, grad_in):
    """Gradient of :func:`roi_pool_nhwc`: each bin's gradient ``grad_out (K, C, PH, PW)`` goes to the
    cell that won it (``argmax``), added into ``grad_in (B, C, H * W) float32`` in torchvision's order
    (RoI, channel, bin), so the sums are equal bit for bit."""
    channels = grad_in.shape[1]
    pooled_h, pooled_w = grad_out.shape[2], grad_out.shape[3]
    for k in range(rois.shape[0]):
        g_in = grad_in[int(rois[k, 0])]
        for ch in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    cell = argmax[k, ch, ph, pw]
                    if cell >= 0:
                        g_in[ch, cell] += grad_out[k, ch, ph, pw]


# GroupNorm over channels-last maps. PyTorch's CPU GroupNorm is fast on NCHW maps and slow on
# channels-last ones (forward and backward about 2x slower), which keeps a CPU backbone in NCHW, where oneDNN
# reorders every depthwise and 1x1 convolution's input and output. These kernels read a map as
# rows of C floats (one row per pixel): the channel loop is contiguous and vectorised, and rows are
# split into chunks that both cores take (``prange``). Per-(image, channel) sums are taken in float64
# per chunk, so the statistics do not depend on how many chunks there are.

_CHUNK_ROWS = 2048


@njit(cache=True, nogil=True, parallel=True)
def _channel_sums(a, b, chunk_rows):
    """Per chunk of rows, per image and channel, ``sum(a)`` and ``sum(a * b)`` in float64.

    ``a``, ``b``: ``(N, R, C) float32`` (R = H * W rows of C channels). Returns two ``(N, C)`` arrays.
    """
    n, rows, c = a.shape
    chunks = (rows + chunk_rows - 1) // chunk_rows
    s1 = np.zeros((n * chunks, c), np.float64)
    s2 = np.zeros((n * chunks, c), np.float64)
    for job in prange(n * chunks):
        i = job // chunks
        r0 = (job % chunks) * chunk_rows
        r1 = min(r0 + chunk_rows, rows)
        p1 = np.zeros(c, np.float64)
        p2 = np.zeros(c, np.float64)
        for r in range(r0, r1):
            for ch in range(c):
                va = np.float64(a[i, r, ch])
                p1[ch] += va
                p2[ch] += va * np.float64(b[i, r, ch])
        s1[job] = p1
        s2[job] = p2
    return s1.reshape(n, chunks, c).sum(axis=1), s2.reshape(n, chunks, c).sum(axis=1)


@njit(cache=True, nogil=True, parallel=True)
def _centred_affine_rows(x, centre, scale, shift, y, add, out, chunk_rows):
    """``out[i, r, c] = (x[i, r, c] - centre[i, c]) * scale[i, c] + shift[i, c] (+ y[i, r, c] * add[i, c])``
    over ``(N, R, C) float32`` rows; ``y`` and ``add`` are read when ``add`` has any rows.

    Centring first keeps float32 from cancelling two large terms when a map's mean is far from zero
    (``x * scale - mean * scale`` loses the variance of values 1000 +- 0.01)."""
    n, rows, c = x.shape
    chunks = (rows + chunk_rows - 1) // chunk_rows
    with_y = add.shape[0] > 0
    for job in prange(n * chunks):
        i = job // chunks
        r0 = (job % chunks) * chunk_rows
        r1 = min(r0 + chunk_rows, rows)
        ce = centre[i]
        sc = scale[i]
        sh = shift[i]
        if with_y:
            ad = add[i]
            for r in range(r0, r1):
                for ch in range(c):
                    out[i, r, ch] = (x[i, r, ch] - ce[ch]) * sc[ch] + sh[ch] + y[i, r, ch] * ad[ch]
        else:
            for r in range(r0, r1):
                for ch in range(c):
                    out[i, r, ch] = (x[i, r, ch] - ce[ch]) * sc[ch] + sh[ch]


_NONE = np.zeros((0, 0), np.float32)


def _centre(mean, per):
    """Each group's mean repeated over its ``per`` channels as float32 (the centre the rows kernel
    subtracts), and what float32 rounded off it (float64, folded into the shift)."""
    mean_c = np.repeat(mean, per, axis=1)
    centre = mean_c.astype(np.float32)
    return centre, mean_c - centre


def group_norm_nhwc(x, groups, weight, bias, eps, y):
    """GroupNorm forward over ``x (N, R, C) float32`` rows (a channels-last map, R = H * W) into ``y``
    (same shape).

    Returns ``(mean (N, G) float64, rstd (N, G) float64)``; ``weight`` and ``bias`` ``(C,) float32``.
    Variance is ``E[x^2] - E[x]^2`` from float64 sums.
    """
    n, rows, c = x.shape
    s1, s2 = _channel_sums(x, x, _CHUNK_ROWS)
    count = rows * (c // groups)
    mean = s1.reshape(n, groups, -1).sum(axis=2) / count
    var = np.maximum(s2.reshape(n, groups, -1).sum(axis=2) / count - mean * mean, 0.0)
    rstd = 1.0 / np.sqrt(var + eps)
    per = c // groups
    scale = np.repeat(rstd, per, axis=1) * weight  # (N, C)
    centre, residual = _centre(mean, per)
    shift = bias - residual * scale
    _centred_affine_rows(x, centre, scale.astype(np.float32), shift.astype(np.float32), x, _NONE, y, _CHUNK_ROWS)
    return mean, rstd


def group_norm_nhwc_backward(dy, x, mean, rstd, groups, weight, dx):
    """Gradients of :func:`group_norm_nhwc`: ``dx (N, R, C) float32`` written in place; returns
    ``(dweight (C,), dbias (C,))``.

    ``dx = rstd * w * dy + c2 * (x - mean) - db_g * rstd / M`` per group, with
    ``c2 = (mean * db_g - ds_g) * rstd^3 / M`` (``ds_g``, ``db_g``: the group's sums of ``w * dy * x``
    and ``w * dy``; M elements per group): PyTorch's formulation, centred as the forward pass.
    """
    n, rows, c = x.shape
    per = c // groups
    db, ds = _channel_sums(dy, x, _CHUNK_ROWS)  # sum(dy), sum(dy * x) per image and channel
    w64 = weight.astype(np.float64)
    ds_g = (ds * w64).reshape(n, groups, per).sum(axis=2)
    db_g = (db * w64).reshape(n, groups, per).sum(axis=2)
    count = rows * per
    c2 = np.repeat((mean * db_g - ds_g) * rstd ** 3 / count, per, axis=1)
    const = np.repeat(-db_g * rstd / count, per, axis=1)
    rstd_c = np.repeat(rstd, per, axis=1)
    centre, residual = _centre(mean, per)
    _centred_affine_rows(x, centre, c2.astype(np.float32), (const - residual * c2).astype(np.float32), dy,
                         (rstd_c * w64).astype(np.float32), dx, _CHUNK_ROWS)
    dweight = ((ds - (centre + residual) * db) * rstd_c).sum(axis=0)  # centre + residual: the float64 mean
    dbias = db.sum(axis=0)
    return dweight.astype(np.float32), dbias.astype(np.float32)
