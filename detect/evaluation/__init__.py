"""How detections are scored and why they miss: COCO and VOC metrics, error analysis, the HTML
report, other detectors' results files."""
