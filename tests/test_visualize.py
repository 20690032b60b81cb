"""Drawing detections (detect.utils.visualize)."""
import numpy as np

from detect.utils.visualize import class_colour, draw_boxes


def _nearest_class(pixel):
    return min((1, 2), key=lambda c: np.abs(np.asarray(class_colour(c), float) - pixel).sum())


def test_the_best_scoring_of_overlapping_boxes_is_drawn_on_top():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[20, 30, 60, 70], [20, 30, 60, 70]], np.float32)  # one object, named twice
    for scores, top in (([0.9, 0.5], 1), ([0.5, 0.9], 2)):
        drawn = draw_boxes(image, boxes, [1, 2], ["a", "b"], scores, thickness=3)
        assert _nearest_class(drawn[70, 40].astype(float)) == top  # the bottom edge, away from the tag
    # without scores: in the order given
    assert _nearest_class(draw_boxes(image, boxes, [1, 2], ["a", "b"], thickness=3)[70, 40].astype(float)) == 2
