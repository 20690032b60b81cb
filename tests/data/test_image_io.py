import numpy as np
import pytest
from PIL import Image

from detect.data.image_io import ImageReadError, read_image, to_rgb_uint8
import cv2


def test_rgb_channel_order(tmp_path):
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 200  # red
    Image.fromarray(img).save(tmp_path / "red.png")
    out = read_image(tmp_path / "red.png")
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert out[..., 0].min() == 200 and out[..., 1:].max() == 0


def test_grayscale_rgba_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (3, 4, 3) and (out == gray[..., None]).all()

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 1] = 90
    rgba[..., 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (3, 4, 3) and (out[..., 1] == 90).all() and out[..., [0, 2]].max() == 0

    g16 = np.array([[0, 257 * 100, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = read_image(tmp_path / "g16.png")
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_applied(tmp_path):
    # Stored 40 wide x 20 high with a white left band; orientation 6 = rotate 90 deg clockwise to
    # display, so the displayed image is 20 wide x 40 high with the band at the top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:8].mean() > 240 and out[12:].mean() < 15


@pytest.mark.parametrize("name,content,reason", [
    ("missing.jpg", None, "file not found"),
    ("empty.jpg", b"", "file is empty"),
    ("text.jpg", b"hello, not an image\n", "not a decodable image"),
    ("noise.png", bytes(range(256)) * 4, "not a decodable image"),
])
def test_unreadable_files_name_path_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert str(path) in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_detected(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full{ext}"
    cv2.imwrite(str(full), img)
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert read_image(full).shape == (64, 64, 3)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(cut)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_to_rgb_uint8_float_and_bad_shape():
    out = to_rgb_uint8(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="shape"):
        to_rgb_uint8(np.zeros((2, 2, 2), np.uint8))
