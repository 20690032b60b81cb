import numpy as np
import pytest

from detect.proposals import MODES, Strategy, selective_search
from detect.proposals import _search_kernels
from detect.proposals.search import convert_colour


def two_rectangles(height=20, split=20, width=40):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :split] = (220, 30, 30)
    image[:, split:] = (30, 30, 220)
    return image


def box_set(boxes):
    return {tuple(int(v) for v in b) for b in boxes}


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_two_flat_rectangles_give_exactly_them_and_their_union(mode):
    boxes = selective_search(two_rectangles(), mode=mode)
    assert box_set(boxes) == {(0, 0, 20, 20), (20, 0, 40, 20), (0, 0, 40, 20)}
    assert boxes.dtype == np.float32 and boxes.shape == (3, 4)


def test_felzenszwalb_splits_two_flat_regions_at_their_border():
    image = two_rectangles().astype(np.float32)
    a, b, w = _search_kernels.sorted_edges(image)
    assert np.all(np.diff(w) >= -1.0 / _search_kernels.WEIGHT_STEPS)  # sorted up to the counting step
    assert len(w) == 19 * 40 + 20 * 39 + 2 * 19 * 39  # right, down and both diagonals
    labels, count = _search_kernels.felzenszwalb(a, b, w, 20 * 40, 50.0, 50)
    labels = labels.reshape(20, 40)
    assert count == 2
    assert len(np.unique(labels[:, :20])) == 1 and len(np.unique(labels[:, 20:])) == 1
    assert labels[0, 0] != labels[0, 39]


def test_min_size_merges_small_regions():
    image = np.zeros((10, 10, 3), np.float32)
    image[4:6, 4:6] = 255  # a 4-pixel island
    a, b, w = _search_kernels.sorted_edges(image)
    _, count = _search_kernels.felzenszwalb(a, b, w, 100, 1.0, 1)
    assert count == 2
    _, count = _search_kernels.felzenszwalb(a, b, w, 100, 1.0, 5)
    assert count == 1


def test_region_histograms_and_size_weighted_merge_equal_the_union_histogram():
    rng = np.random.default_rng(0)
    height, width = 6, 8
    colour_bins = rng.integers(0, 25, (height * width, 3)).astype(np.uint8)
    tex_bins = rng.integers(0, 10, (height * width, 24)).astype(np.uint8)
    labels = np.zeros(height * width, np.int32)
    labels[: 3 * width] = 1  # top 3 rows region 1 (24 px), rest region 0 (24 px)
    labels[3 * width: 3 * width + 5] = 1  # region 1: 29 px, region 0: 19 px
    sizes, boxes, colour, texture = _search_kernels.region_features(labels, 2, width, colour_bins, tex_bins)
    assert sizes.tolist() == [19, 29]
    assert boxes.tolist() == [[0, 3, 7, 5], [0, 0, 7, 3]]
    np.testing.assert_allclose(colour.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(texture.sum(1), 1, rtol=1e-6)
    # region 0's red-channel histogram by hand
    red = np.bincount(colour_bins[labels == 0, 0], minlength=25) / (19 * 3)
    np.testing.assert_allclose(colour[0, :25], red, rtol=1e-6)

    merged = _search_kernels.merge_histograms(colour[0], sizes[0], colour[1], sizes[1])
    _, _, union, union_tex = _search_kernels.region_features(np.zeros_like(labels), 1, width, colour_bins, tex_bins)
    np.testing.assert_allclose(merged, union[0], atol=1e-6)
    np.testing.assert_allclose(_search_kernels.merge_histograms(texture[0], 19.0, texture[1], 29.0), union_tex[0],
                               atol=1e-6)


def test_grouping_merges_the_most_similar_pair_first():
    # three regions in a row: 0 and 1 share their colour histogram, 2 differs
    sizes = np.array([10.0, 10.0, 10.0])
    boxes = np.array([[0, 0, 1, 4], [2, 0, 3, 4], [4, 0, 5, 4]], np.int32)
    colour = np.zeros((3, 75), np.float32)
    colour[0, 0] = colour[1, 0] = 1
    colour[2, 1] = 1
    texture = np.full((3, 240), 1 / 240, np.float32)
    pairs = np.array([[0, 1], [1, 2]], np.int32)
    out = _search_kernels.hierarchical_grouping(sizes, boxes, colour, texture, pairs, True, False, False, False, 30.0)
    assert out.tolist() == [[0, 0, 1, 4], [2, 0, 3, 4], [4, 0, 5, 4], [0, 0, 3, 4], [0, 0, 5, 4]]


def test_same_seed_same_output_other_seed_same_set_other_order():
    rng = np.random.default_rng(3)
    image = (rng.random((48, 64, 3)) * 40).astype(np.uint8)
    image[8:30, 10:40] += 150
    image[20:44, 30:60, 1] += 90
    a = selective_search(image, seed=1)
    b = selective_search(image, seed=1)
    c = selective_search(image, seed=2)
    np.testing.assert_array_equal(a, b)
    assert box_set(a) == box_set(c)
    assert len(a) > 10 and not np.array_equal(a, c)
    assert len(box_set(a)) == len(a)  # no duplicates
    assert (0, 0, 64, 48) in box_set(a)


def test_adjacent_pairs_are_unique_and_include_diagonal_contact():
    labels = np.array([[0, 0, 1],
                       [0, 0, 1],
                       [2, 3, 3]], np.int32).ravel()
    pairs = _search_kernels.adjacent_pairs(labels, 3, 3)
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3], [1, 3], [2, 3]]


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 2, 3), (3000, 20, 3), (20, 3000, 3), (1, 50, 3), (30, 30)])
def test_degenerate_images_give_valid_boxes(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    height, width = shape[:2]
    boxes = selective_search(image, mode="single")
    assert len(boxes) >= 1 and (0, 0, width, height) in box_set(boxes)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
    assert np.all(boxes[:, 2:] > boxes[:, :2])


def test_single_colour_and_grayscale_images():
    flat = np.full((40, 50, 3), 77, np.uint8)
    assert box_set(selective_search(flat)) == {(0, 0, 50, 40)}
    gray = two_rectangles()[:, :, 0]
    assert box_set(selective_search(gray)) == {(0, 0, 20, 20), (20, 0, 40, 20), (0, 0, 40, 20)}
    rgba = np.dstack([two_rectangles(), np.full((20, 40), 255, np.uint8)])
    assert box_set(selective_search(rgba)) == box_set(selective_search(two_rectangles()))


def test_max_side_searches_a_downscaled_copy_and_maps_boxes_back():
    image = np.zeros((400, 800, 3), np.uint8)
    image[:, :400] = (200, 40, 40)
    image[:, 400:] = (40, 40, 200)
    boxes = selective_search(image, mode="single", max_side=100)
    assert box_set(boxes) == {(0, 0, 400, 400), (400, 0, 800, 400), (0, 0, 800, 400)}


def test_modes_are_the_papers():
    assert len(MODES["single"]) == 1
    assert {(s.colour_space, s.k, s.similarities) for s in MODES["fast"]} == {
        (c, k, s) for c in ("hsv", "lab") for k in (50, 100) for s in ("CTSF", "TSF")}
    assert len(MODES["quality"]) == 5 * 4 * 4
    custom = selective_search(two_rectangles(), mode=[Strategy("rgi", 30, "SF")])
    assert box_set(custom) == {(0, 0, 20, 20), (20, 0, 40, 20), (0, 0, 40, 20)}
    with pytest.raises(ValueError, match="unknown selective search mode"):
        selective_search(two_rectangles(), mode="slow")


def test_colour_spaces_keep_shape_and_range():
    image = two_rectangles()
    for space, channels in [("hsv", 3), ("lab", 3), ("rgi", 3), ("h", 1), ("i", 1)]:
        out = convert_colour(image, space)
        assert out.shape == (20, 40, channels) and out.dtype == np.uint8
    rgi = convert_colour(np.zeros((2, 2, 3), np.uint8), "rgi")  # black: no division by zero
    assert rgi[0, 0].tolist() == [85, 85, 0]
