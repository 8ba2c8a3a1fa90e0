"""Tiny trainable nets, solvers and data for the training tests (fast on two CPU cores).

The net: a train_val with a TRAIN and a TEST Data layer (crop 10 of 12 x 12 images, mirror in TRAIN, a
mean value), a learnable conv (lr_mult 1/2, decay_mult 1/0), a frozen conv (lr_mult 0), max pooling and
an inner product (lr_mult 10/20) into a SoftmaxWithLoss over 2 classes (a gender-like target); Accuracy
in TEST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agegender.folds import CaffeTransform, GPUResidentDataset

TINY_TRAIN_VAL = """name: "tiny"
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ crop_size: 10 mirror: true mean_value: 100 }}
  data_param {{ source: "{train}" batch_size: 4 backend: LMDB }}
}}
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: TEST }}
  transform_param {{ crop_size: 10 mean_value: 100 }}
  data_param {{ source: "{val}" batch_size: 4 backend: LMDB }}
}}
layer {{
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: 4 kernel_size: 3
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }}
}}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{
  name: "frozen" type: "Convolution" bottom: "conv1" top: "frozen"
  param {{ lr_mult: 0 }} param {{ lr_mult: 0 }}
  convolution_param {{ num_output: 4 kernel_size: 1 pad: 0
    weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "constant" value: 0.0 }} }}
}}
layer {{ name: "pool1" type: "Pooling" bottom: "frozen" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{
  name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  param {{ lr_mult: 10 decay_mult: 1 }} param {{ lr_mult: 20 decay_mult: 0 }}
  inner_product_param {{ num_output: 2
    weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "constant" }} }}
}}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
"""

TINY_SOLVER = """net: "train_val.prototxt"
base_lr: {base_lr}
lr_policy: "step"
gamma: 0.5
stepsize: 2
momentum: 0.9
weight_decay: 0.01
max_iter: {max_iter}
iter_size: {iter_size}
snapshot: {snapshot}
display: 1
{extra}
"""

CLASSES = 2
IMAGE = 12


def write_tiny(folder: Path, *, max_iter: int = 5, iter_size: int = 1, snapshot: int = 0, base_lr: float = 0.01,
               extra: str = "", train: str = "train_lmdb", val: str = "val_lmdb") -> tuple[Path, Path]:
    """Write ``train_val.prototxt`` and ``solver.prototxt`` of the tiny net into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    train_val = folder / "train_val.prototxt"
    train_val.write_text(TINY_TRAIN_VAL.format(train=train, val=val))
    solver = folder / "solver.prototxt"
    solver.write_text(TINY_SOLVER.format(base_lr=base_lr, max_iter=max_iter, iter_size=iter_size, snapshot=snapshot,
                                         extra=extra))
    return train_val, solver


def tiny_images(count: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x 3 x 12 x 12 images whose label (0 or 1) is visible in them (a brighter half of the image)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    images = rng.integers(60, 140, size=(count, 3, IMAGE, IMAGE)).astype(np.uint8)
    for i, label in enumerate(labels):
        rows = slice(label * 6, (label + 1) * 6)
        images[i, :, rows, :] = np.clip(images[i, :, rows, :].astype(np.int64) + 80, 0, 255)
    return images, labels.astype(np.int64)


def tiny_resident(count: int = 24, seed: int = 0, phase: str = "TRAIN") -> GPUResidentDataset:
    """The tiny images on the CPU with the tiny net's transform of ``phase``."""
    images, labels = tiny_images(count, seed)
    transform = CaffeTransform.from_values(crop_size=10, mirror=phase == "TRAIN", mean_value=100, phase=phase)
    return GPUResidentDataset(images, labels, transform, "cpu")


def write_tiny_faces(folder: Path, count: int = 24, seed: int = 0) -> tuple[Path, np.ndarray]:
    """The tiny images as PNG files under ``folder/images`` and a ``path label`` list of them."""
    import cv2

    images, labels = tiny_images(count, seed)
    root = folder / "images"
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = f"face_{i:03d}.png"
        cv2.imwrite(str(root / name), image.transpose(1, 2, 0))
        lines.append(f"{name} {label}\n")
    listing = folder / "all.txt"
    listing.write_text("".join(lines))
    return root, labels
