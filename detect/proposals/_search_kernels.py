"""Compiled inner loops of selective search (numba, single thread).

Everything here works on flat arrays: pixels are indexed ``p = y * W + x``, region ids are
``0..R-1`` for the initial segmentation and ``R, R+1, ...`` for regions made by merging.
The Python side (``selective_search.py``) prepares the inputs with OpenCV and numpy and
combines the outputs; only the loops that numpy cannot express live here.
"""
import heapq

import numpy as np
from numba import njit

COLOUR_BINS = 25  # per channel (Uijlings et al. 2013, section 3.2)
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10  # per orientation and channel
_C45 = np.float32(np.sqrt(0.5))


WEIGHT_STEPS = 64  # counting-sort resolution of edge weights: 1/64 of a grey level


@njit(cache=True, nogil=True)
def sorted_edges(smoothed):
    """8-connected grid graph of a smoothed ``(H, W, C)`` float32 image, sorted by weight.

    Returns ``a, b (E,) int32`` pixel indices and ``w (E,) float32`` Euclidean colour
    distances, ascending, each undirected edge once (right, down, down-right, up-right) as in
    Felzenszwalb and Huttenlocher's reference code. A counting sort on the weight in steps of
    1/64 grey level replaces the comparison sort (5-10x faster); only edges closer than one
    step keep their scan order, the weights themselves stay exact.
    """
    height, width, channels = smoothed.shape
    n = height * width * 4
    a = np.empty(n, np.int32)
    b = np.empty(n, np.int32)
    w = np.empty(n, np.float32)
    e = 0
    for y in range(height):
        for x in range(width):
            p = y * width + x
            for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 1)):
                yy = y + dy
                xx = x + dx
                if yy < 0 or yy >= height or xx >= width:
                    continue
                d = 0.0
                for c in range(channels):
                    diff = smoothed[y, x, c] - smoothed[yy, xx, c]
                    d += diff * diff
                a[e] = p
                b[e] = yy * width + xx
                w[e] = np.sqrt(d)
                e += 1
    top = 0.0
    for i in range(e):
        if w[i] > top:
            top = w[i]
    buckets = int(top * WEIGHT_STEPS) + 2
    start = np.zeros(buckets + 1, np.int64)
    for i in range(e):
        start[int(w[i] * WEIGHT_STEPS) + 1] += 1
    for k in range(buckets):
        start[k + 1] += start[k]
    sa = np.empty(e, np.int32)
    sb = np.empty(e, np.int32)
    sw = np.empty(e, np.float32)
    for i in range(e):
        k = int(w[i] * WEIGHT_STEPS)
        j = start[k]
        start[k] += 1
        sa[j] = a[i]
        sb[j] = b[i]
        sw[j] = w[i]
    return sa, sb, sw


@njit(cache=True, nogil=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True, nogil=True)
def felzenszwalb(a, b, w, num_pixels, k, min_size):
    """Graph-based segmentation (Felzenszwalb & Huttenlocher, IJCV 2004).

    The edges ``a, b, w`` come sorted by weight (``sorted_edges``). Two components merge when the edge between them is
    no heavier than either component's internal difference plus ``k / size``; afterwards
    components smaller than ``min_size`` are merged along their lightest edges.
    Returns ``(labels (num_pixels,) int32 in 0..R-1, R)``.
    """
    parent = np.arange(num_pixels).astype(np.int32)
    size = np.ones(num_pixels, np.int32)
    threshold = np.full(num_pixels, k, np.float32)
    for i in range(w.shape[0]):
        ra = _find(parent, a[i])
        rb = _find(parent, b[i])
        if ra == rb or w[i] > threshold[ra] or w[i] > threshold[rb]:
            continue
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        threshold[ra] = w[i] + k / size[ra]
    for i in range(w.shape[0]):
        ra = _find(parent, a[i])
        rb = _find(parent, b[i])
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    labels = np.empty(num_pixels, np.int32)
    relabel = np.full(num_pixels, -1, np.int32)
    count = 0
    for p in range(num_pixels):
        r = _find(parent, p)
        if relabel[r] < 0:
            relabel[r] = count
            count += 1
        labels[p] = relabel[r]
    return labels, count


@njit(cache=True, nogil=True)
def texture_bins(dx, dy):
    """Bin indices of oriented Gaussian-derivative responses, ``(H*W, 8*C) uint8``.

    ``dx, dy (H, W, C)`` are first Gaussian derivatives. Four directions (0, 45, 90, 135
    degrees) are steered from them and split into their positive and negative halves, giving
    the paper's eight orientations; each (orientation, channel) response is scaled by its
    image maximum and cut into 10 bins.
    """
    height, width, channels = dx.shape
    features = TEXTURE_ORIENTATIONS * channels
    top = np.zeros(features, np.float32)
    scale = np.zeros(features, np.float32)
    bins = np.zeros((height * width, features), np.uint8)
    for pass_ in range(2):  # first the maxima, then the bins: no (P, 8C) float buffer
        if pass_ == 1:
            for f in range(features):
                if top[f] > 0:
                    scale[f] = TEXTURE_BINS / top[f]
        for y in range(height):
            for x in range(width):
                p = y * width + x
                for c in range(channels):
                    gx = dx[y, x, c]
                    gy = dy[y, x, c]
                    for d in range(4):
                        if d == 0:
                            r = gx
                        elif d == 1:
                            r = gy
                        elif d == 2:
                            r = _C45 * (gx + gy)
                        else:
                            r = _C45 * (gy - gx)
                        f = c * TEXTURE_ORIENTATIONS + 2 * d
                        if r < 0:
                            f += 1
                            r = -r
                        if pass_ == 0:
                            if r > top[f]:
                                top[f] = r
                        else:
                            v = int(r * scale[f])
                            bins[p, f] = v if v < TEXTURE_BINS else TEXTURE_BINS - 1
    return bins


@njit(cache=True, nogil=True)
def region_features(labels, count, width, colour_bins, tex_bins):
    """Per-region size, inclusive pixel box and L1-normalised histograms.

    ``colour_bins (P, C) uint8`` hold each pixel's colour bin per channel (0..24),
    ``tex_bins (P, 8*C) uint8`` its texture bin per (channel, orientation). Returns
    ``sizes (R,) float64``, ``boxes (R, 4) int32`` (x0, y0, x1, y1 inclusive), colour
    histograms ``(R, 25*C)`` and texture histograms ``(R, 80*C)`` (float32, each summing to 1).
    """
    num = labels.shape[0]
    channels = colour_bins.shape[1]
    features = tex_bins.shape[1]
    sizes = np.zeros(count, np.float64)
    boxes = np.empty((count, 4), np.int32)
    boxes[:, 0] = 1 << 30
    boxes[:, 1] = 1 << 30
    boxes[:, 2] = -1
    boxes[:, 3] = -1
    colour = np.zeros((count, COLOUR_BINS * channels), np.float32)
    texture = np.zeros((count, TEXTURE_BINS * features), np.float32)
    for p in range(num):
        r = labels[p]
        y = p // width
        x = p - y * width
        sizes[r] += 1
        if x < boxes[r, 0]:
            boxes[r, 0] = x
        if y < boxes[r, 1]:
            boxes[r, 1] = y
        if x > boxes[r, 2]:
            boxes[r, 2] = x
        if y > boxes[r, 3]:
            boxes[r, 3] = y
        for c in range(channels):
            colour[r, c * COLOUR_BINS + colour_bins[p, c]] += 1
        for f in range(features):
            texture[r, f * TEXTURE_BINS + tex_bins[p, f]] += 1
    for r in range(count):
        colour[r] /= sizes[r] * channels
        texture[r] /= sizes[r] * features
    return sizes, boxes, colour, texture


@njit(cache=True, nogil=True)
def adjacent_pairs(labels, height, width):
    """Unique pairs ``(E, 2) int32`` (a < b) of regions touching in the 8-connected grid."""
    count = 0
    for p in range(labels.shape[0]):
        if labels[p] + 1 > count:
            count = labels[p] + 1
    keys = np.empty(4 * labels.shape[0], np.int64)
    n = 0
    for y in range(height):
        for x in range(width):
            la = labels[y * width + x]
            for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 1)):
                yy = y + dy
                xx = x + dx
                if yy < 0 or yy >= height or xx >= width:
                    continue
                lb = labels[yy * width + xx]
                if la != lb:
                    lo = la if la < lb else lb
                    hi = lb if la < lb else la
                    keys[n] = np.int64(lo) * count + hi
                    n += 1
    keys = np.unique(keys[:n])
    pairs = np.empty((keys.shape[0], 2), np.int32)
    for i in range(keys.shape[0]):
        pairs[i, 0] = keys[i] // count
        pairs[i, 1] = keys[i] % count
    return pairs


@njit(cache=True, nogil=True)
def _similarity(i, j, sizes, boxes, colour, texture, use_colour, use_texture, use_size, use_fill,
                image_size):
    s = 0.0
    if use_colour:
        acc = 0.0
        for f in range(colour.shape[1]):
            acc += min(colour[i, f], colour[j, f])
        s += acc
    if use_texture:
        acc = 0.0
        for f in range(texture.shape[1]):
            acc += min(texture[i, f], texture[j, f])
        s += acc
    if use_size:
        s += 1.0 - (sizes[i] + sizes[j]) / image_size
    if use_fill:
        bw = max(boxes[i, 2], boxes[j, 2]) - min(boxes[i, 0], boxes[j, 0]) + 1
        bh = max(boxes[i, 3], boxes[j, 3]) - min(boxes[i, 1], boxes[j, 1]) + 1
        s += 1.0 - (bw * bh - sizes[i] - sizes[j]) / image_size
    return s


@njit(cache=True, nogil=True)
def merge_histograms(hist_i, size_i, hist_j, size_j):
    """Histogram of the union of two regions from theirs: the size-weighted mean (section 3.2).

    Exact for normalised histograms, so a merged region never goes back to its pixels.
    """
    total = size_i + size_j
    return (hist_i * (size_i / total) + hist_j * (size_j / total)).astype(np.float32)


@njit(cache=True, nogil=True)
def hierarchical_grouping(sizes0, boxes0, colour0, texture0, pairs, use_colour, use_texture,
                          use_size, use_fill, image_size):
    """Greedy merging of the most similar neighbouring regions until one is left.

    Returns the inclusive boxes ``(M, 4) int32`` of every region of the hierarchy: the ``R``
    initial regions first, then each merged region in the order it was made (so the last
    row is the top of the hierarchy). A merged region's histograms are the size-weighted
    mean of its parts' (section 3.2), its neighbours the union of theirs.
    """
    r0 = sizes0.shape[0]
    cap = 2 * r0 - 1 if r0 > 0 else 0
    sizes = np.zeros(cap, np.float64)
    boxes = np.zeros((cap, 4), np.int32)
    colour = np.zeros((cap, colour0.shape[1]), np.float32)
    texture = np.zeros((cap, texture0.shape[1]), np.float32)
    sizes[:r0] = sizes0
    boxes[:r0] = boxes0
    colour[:r0] = colour0
    texture[:r0] = texture0
    alive = np.zeros(cap, np.bool_)
    alive[:r0] = True
    parent = np.arange(cap).astype(np.int32)
    stamp = np.full(cap, -1, np.int32)

    # neighbour lists in one growing buffer: region i owns nb[start[i]:start[i] + length[i]]
    degree = np.zeros(r0, np.int32)
    for e in range(pairs.shape[0]):
        degree[pairs[e, 0]] += 1
        degree[pairs[e, 1]] += 1
    start = np.zeros(cap, np.int64)
    length = np.zeros(cap, np.int64)
    total = 0
    for i in range(r0):
        start[i] = total
        total += degree[i]
    nb = np.empty(max(2 * total, 16), np.int32)
    for e in range(pairs.shape[0]):
        i = pairs[e, 0]
        j = pairs[e, 1]
        nb[start[i] + length[i]] = j
        length[i] += 1
        nb[start[j] + length[j]] = i
        length[j] += 1
    used = total

    heap = [(0.0, np.int32(0), np.int32(0))]
    heap.pop()
    for e in range(pairs.shape[0]):
        i = pairs[e, 0]
        j = pairs[e, 1]
        s = _similarity(i, j, sizes, boxes, colour, texture, use_colour, use_texture, use_size,
                        use_fill, image_size)
        heap.append((-s, np.int32(i), np.int32(j)))
    heapq.heapify(heap)

    made = r0
    while len(heap) > 0:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        n = made
        made += 1
        sizes[n] = sizes[i] + sizes[j]
        boxes[n, 0] = min(boxes[i, 0], boxes[j, 0])
        boxes[n, 1] = min(boxes[i, 1], boxes[j, 1])
        boxes[n, 2] = max(boxes[i, 2], boxes[j, 2])
        boxes[n, 3] = max(boxes[i, 3], boxes[j, 3])
        colour[n] = merge_histograms(colour[i], sizes[i], colour[j], sizes[j])
        texture[n] = merge_histograms(texture[i], sizes[i], texture[j], sizes[j])
        alive[i] = False
        alive[j] = False
        alive[n] = True
        parent[i] = n
        parent[j] = n

        need = used + length[i] + length[j]
        if need > nb.shape[0]:
            grown = np.empty(2 * need, np.int32)
            grown[:used] = nb[:used]
            nb = grown
        start[n] = used
        stamp[n] = n
        for source in (i, j):
            for t in range(start[source], start[source] + length[source]):
                r = _find(parent, nb[t])
                if stamp[r] == n or not alive[r]:
                    continue
                stamp[r] = n
                nb[used] = r
                used += 1
                length[n] += 1
                s = _similarity(n, r, sizes, boxes, colour, texture, use_colour, use_texture,
                                use_size, use_fill, image_size)
                heapq.heappush(heap, (-s, np.int32(n), np.int32(r)))
    return boxes[:made]
