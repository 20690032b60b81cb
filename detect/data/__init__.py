"""Datasets (COCO json, Pascal VOC, image folders), image reading, transforms, batching, synthetic data."""
from detect.data.build import build_dataset
from detect.data.coco import load_coco, to_coco_dict
from detect.data.collate import collate_detection, image_to_tensor
from detect.data.detection_dataset import CategoryMap, DatasetError, DetectionDataset, ImageRecord, Problem
from detect.data.folder import ImageFolder, list_images
from detect.data.image_io import IMAGE_EXTENSIONS, ImageReadError, read_image
from detect.data.samplers import GroupedBatchSampler, InfiniteSampler, aspect_ratio_groups
from detect.data.transforms import DetectionTransform, boxes_to_original, build_transforms
from detect.data.voc import load_voc

__all__ = [
    "CategoryMap", "DatasetError", "DetectionDataset", "DetectionTransform", "GroupedBatchSampler",
    "IMAGE_EXTENSIONS", "ImageFolder", "ImageReadError", "ImageRecord", "InfiniteSampler", "Problem",
    "aspect_ratio_groups", "boxes_to_original", "build_dataset", "build_transforms", "collate_detection",
    "image_to_tensor", "list_images", "load_coco", "load_voc", "read_image", "to_coco_dict",
]
