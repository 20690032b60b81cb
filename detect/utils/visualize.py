"""Drawing boxes with readable labels (dataset inspection now; inference outputs later)."""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np


def class_colour(label: int) -> Tuple[int, int, int]:
    """A distinct, stable RGB colour per label (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
               scores: Optional[Sequence[float]] = None, thickness: Optional[int] = None) -> np.ndarray:
    """Return a copy of ``image`` (``HxWx3`` uint8 RGB) with ``boxes (N, 4)`` xyxy drawn.

    Each box gets its class colour and a label (name, and score when given) on a filled tag whose
    text colour is chosen for contrast; tags stay inside the image. With scores, the best-scoring
    box is drawn last, over the others.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.35, min(h, w) / 900)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    # lowest score first: where detections overlap (one object named as two classes), the best one's
    # box and tag are drawn last, on top, instead of whichever came last (of equal scores, the first)
    order = range(len(boxes)) if scores is None else np.argsort(-np.asarray(scores, np.float64), kind="stable")[::-1]
    for i in order:
        box, label = boxes[i], labels[i]
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        name = class_names[int(label) - 1] if 0 < int(label) <= len(class_names) else str(int(label))
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx = min(max(x1, 0), max(w - tw - 2, 0))
        ty = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else min(y1 + 1, max(h - th - baseline - 2, 0))
        cv2.rectangle(out, (tx, ty), (tx + tw + 2, ty + th + baseline + 2), colour, -1)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        text_colour = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, text, (tx + 1, ty + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour, 1,
                    cv2.LINE_AA)
    return out


def write_image(path, image: np.ndarray) -> None:
    """Write an RGB image with OpenCV (which expects BGR), raising if the write fails."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot write image {path}")
