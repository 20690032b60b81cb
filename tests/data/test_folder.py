import numpy as np
import pytest
from torch.utils.data import DataLoader

from detect.data.collate import collate_detection
from detect.data.detection_dataset import DatasetError
from detect.data.folder import ImageFolder, list_images
from detect.data.transforms import DetectionTransform
from tests.conftest import write_rgb


def test_recursive_sorted_and_unreadable_reported(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    write_rgb(tmp_path / "b" / "img.jpg", img)
    write_rgb(tmp_path / "a" / "img.jpg", img)
    write_rgb(tmp_path / "z.PNG", img)
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    rel = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert rel == ["a/img.jpg", "b/img.jpg", "broken.jpg", "z.PNG"]

    ds = ImageFolder(tmp_path, transform=DetectionTransform(10, 100))
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_detection, num_workers=0)
    images, infos = next(iter(loader))
    assert [i["rel_path"] for i in infos] == rel
    assert images[2] is None and "not a decodable image" in infos[2]["error"]
    assert images[0].shape == (3, 10, 15) and infos[0]["orig_size"] == (20, 30)
    assert infos[0]["scale"] == (0.5, 0.5)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolder(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        ImageFolder(tmp_path / "nope")
