"""One HTML page per evaluation (``tools/eval.py --report DIR``): the COCO table, per-class AP, PR
curves, the error breakdown of :mod:`detect.evaluation.error_analysis` as a bar chart and tables, the confusion
matrix, and galleries of the images with the most errors of each type. Every picture is embedded
(base64), so ``report.html`` is one file that reads offline.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from detect.evaluation.error_analysis import ERROR_TYPES, SIZES, analyse_errors, confusion_matrix
from detect.evaluation.metrics import COCO_STATS, plot_pr_curves
from detect.ops.boxes import xywh_to_xyxy

# RGB; a true positive green, the error types in TIDE's order of the bar chart
COLOURS = {"tp": (46, 160, 67), "cls": (214, 39, 40), "loc": (255, 127, 14), "both": (148, 103, 189),
           "dupe": (23, 190, 207), "bkg": (227, 119, 194), "missed": (255, 221, 0)}
NAMES = {"cls": "classification", "loc": "localisation", "both": "both (class and box)", "dupe": "duplicate",
         "bkg": "background", "missed": "missed"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _jpeg(image_rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_chart(errors: Dict[str, Any]) -> str:
    """Bar chart of the AP50 points each error type costs (TIDE's dAP)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    values = [100 * errors["dAP"][k] for k in ERROR_TYPES]
    ax.bar([NAMES[k] for k in ERROR_TYPES], values, color=[np.array(COLOURS[k]) / 255 for k in ERROR_TYPES])
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("dAP50 (points) if fixed")
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def confusion_chart(confusion: Dict[str, Any]) -> str:
    plt = _pyplot()
    m = np.asarray(confusion["matrix"])
    names = confusion["classes"]
    size = 1.0 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(m / np.maximum(m.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("detected as")
    ax.set_ylabel("ground truth")
    ax.set_title(f"IoU >= {confusion['iou']:g}, score >= {confusion['score_thresh']:g} (rows normalised)")
    return _png(fig)


def draw_errors(image: np.ndarray, anns: List[Dict[str, Any]], dets: List[tuple], missed: set,
                names: Mapping[int, str]) -> np.ndarray:
    """``image`` with its ground truth (white; missed boxes in the missed colour, thick) and the
    detections ``(result, type)`` coloured by type (``tp`` green)."""
    out = np.ascontiguousarray(image.copy())
    t = max(1, round(min(out.shape[:2]) / 300))
    for ann in anns:
        x1, y1, x2, y2 = (int(round(v)) for v in xywh_to_xyxy(np.asarray(ann["bbox"], np.float64)))
        hit = ann["id"] in missed
        cv2.rectangle(out, (x1, y1), (x2, y2), COLOURS["missed"] if hit else (255, 255, 255), 2 * t if hit else t)
    for det, kind in dets:
        x1, y1, x2, y2 = (int(round(v)) for v in xywh_to_xyxy(np.asarray(det["bbox"], np.float64)))
        cv2.rectangle(out, (x1, y1), (x2, y2), COLOURS[kind], t, cv2.LINE_AA)
        cv2.putText(out, f"{kind} {names.get(det['category_id'], '?')} {det['score']:.2f}", (x1 + 2, max(y1 - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, COLOURS[kind], 1, cv2.LINE_AA)
    return out


def galleries(gt: Dict[str, Any], results: Sequence[Dict[str, Any]], errors: Dict[str, Any],
              image_paths: Mapping[int, Union[str, Path]], per_type: int = 4, min_score: float = 0.3
              ) -> Dict[str, List[Dict[str, str]]]:
    """For each error type, the ``per_type`` images with most errors of it, drawn (detections scoring
    at least ``min_score``). Unreadable images are left out."""
    from detect.data.image_io import read_image
    from detect.errors import ImageReadError

    names = {c["id"]: c["name"] for c in gt["categories"]}
    anns: Dict[int, List[Dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    missed = set(errors["missed"])
    missed_image = {a["id"]: a["image_id"] for a in gt["annotations"] if a["id"] in missed}
    per_image: Dict[int, Dict[str, int]] = {}
    for k, kind in errors["per_detection"].items():
        counts = per_image.setdefault(results[int(k)]["image_id"], {})
        counts[kind] = counts.get(kind, 0) + 1
    for image_id in missed_image.values():
        counts = per_image.setdefault(image_id, {})
        counts["missed"] = counts.get("missed", 0) + 1
    dets: Dict[int, List[tuple]] = {}
    for k, det in enumerate(results):
        if det["score"] >= min_score:
            dets.setdefault(det["image_id"], []).append((det, errors["per_detection"].get(k, "tp")))
    images: Dict[int, Optional[np.ndarray]] = {}  # an image in several galleries is read once
    out: Dict[str, List[Dict[str, str]]] = {}
    for kind in ERROR_TYPES:
        ranked = sorted((i for i in per_image if per_image[i].get(kind)), key=lambda i: -per_image[i][kind])
        out[kind] = []
        for image_id in ranked:
            if len(out[kind]) >= per_type or image_id not in image_paths:
                break
            if image_id not in images:
                try:
                    images[image_id] = read_image(image_paths[image_id])
                except ImageReadError:
                    images[image_id] = None
            image = images[image_id]
            if image is None:
                continue
            drawn = draw_errors(image, anns.get(image_id, []), dets.get(image_id, []), missed, names)
            out[kind].append({"image_id": str(image_id), "src": _jpeg(drawn), "count": str(per_image[image_id][kind]),
                              "path": str(image_paths[image_id])})
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(output_dir: Union[str, Path], gt: Dict[str, Any], results: Sequence[Dict[str, Any]],
                 metrics: Dict[str, Any], image_paths: Optional[Mapping[int, Union[str, Path]]] = None,
                 title: str = "detect evaluation", score_thresh: float = 0.5) -> Dict[str, Any]:
    """Write ``report.html`` into ``output_dir`` for ``results`` against ``gt`` (``metrics``: what
    ``evaluate_detections`` returned for them). Returns the error analysis and confusion matrix
    (what ``metrics.json`` gains)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors = analyse_errors(gt, results)
    confusion = confusion_matrix(gt, results, score_thresh=score_thresh)
    coco = metrics["coco"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections."
             f"</p>", "<h2>COCO metrics</h2>",
             _table(COCO_STATS, [[float(coco[k]) for k in COCO_STATS]]),
             "<h2>Per class</h2>",
             _table(["class", "AP", "AP50", "dAP50 cls", "loc", "both", "dupe", "bkg", "missed"],
                    [[name, float(v["AP"]), float(v["AP50"])] + [100 * errors["dAP_by_class"][name][k] for k in
                                                                 ERROR_TYPES] for name, v in coco["per_class"].items()])]
    curves = coco.get("pr_curves") or {}
    if curves:
        buf = io.BytesIO()
        plot_pr_curves(curves, buf)
        parts += ["<h2>Precision-recall at IoU 0.5</h2>",
                  f'<img alt="PR curves" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">']
    parts += ["<h2>Why AP50 is not 1: errors by type (TIDE)</h2>",
              f"<p>AP50 {100 * errors['AP50']:.1f}. Each bar: the AP50 points gained if every error of that type "
              f"were fixed (the others left as they are).</p>", f'<img alt="error breakdown" src="{error_chart(errors)}">',
              _table(["", *[NAMES[k] for k in ERROR_TYPES]],
                     [["count", *[errors["counts"][k] for k in ERROR_TYPES]],
                      ["dAP50", *[f"{100 * errors['dAP'][k]:.2f}" for k in ERROR_TYPES]]]
                     + [[f"count, {s}", *[errors["counts_by_size"][s][k] for k in ERROR_TYPES]] for s in SIZES]
                     + [[f"dAP50, {s}", *[f"{100 * errors['dAP_by_size'][s][k]:.2f}" for k in ERROR_TYPES]]
                        for s in SIZES]),
              "<h2>Confusion matrix</h2>", f'<img alt="confusion matrix" src="{confusion_chart(confusion)}">',
              _table(["ground truth \\ detected as", *confusion["classes"]],
                     [[name, *row] for name, row in zip(confusion["classes"], confusion["matrix"])])]
    if image_paths:
        legend = " ".join(f'<span style="color:rgb{COLOURS[k]}">&#9632; {NAMES.get(k, "true positive")}</span>'
                          for k in ("tp", *ERROR_TYPES))
        parts += ["<h2>Images with the most errors of each type</h2>",
                  f"<p>Ground truth white (missed: yellow, thick); detections scoring 0.3 or more: {legend}</p>"]
        for kind, items in galleries(gt, results, errors, image_paths).items():
            parts.append(f"<h3>{NAMES[kind]}</h3>" + ("".join(
                f'<figure><img alt="{html.escape(i["path"])}" src="{i["src"]}"><figcaption>{html.escape(Path(i["path"]).name)}'
                f': {i["count"]}</figcaption></figure>' for i in items) or "<p>none</p>"))
    else:
        parts.append("<p>No image folder given: no galleries.</p>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block;margin:4px}"
            "figure img{max-width:380px}</style></head><body>" + "\n".join(parts) +
            # lets a headless browser report whether every picture decoded (tests/engine/test_report.py)
            "<script>window.addEventListener('load',()=>{const i=[...document.images];"
            "document.body.dataset.images=i.length;"
            "document.body.dataset.broken=i.filter(x=>!x.complete||x.naturalWidth===0).length;});</script>"
            "</body></html>")
    tmp = out / "report.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "report.html")
    analysis = {k: v for k, v in errors.items() if k not in ("per_detection", "missed")}
    return {"errors": analysis, "confusion": confusion}
