"""The image half of ``aimaster demo``: generated pictures, and a CNN that classifies them.

Everything is made here, so the demo needs no download: the pictures are drawn with torch (a disc,
a square or stripes in random colours on a noisy background) and saved as binary PPM files, a
format simple enough to write and read without an imaging library; the model is the small CNN of
``examples/image_classification.py`` (three conv blocks and a linear head, random weights from a
fixed seed, so every worker holds the same model).

The worker (``python -m aimaster.demo_images worker IN OUT SLICE_SIZE``) is an ordinary
ElasticBatch program: it claims slices of image files, decodes and classifies them in batches,
writes one line per image through the atomic output helper, and commits.
"""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

SIZE = 64
CLASSES = [f"class_{i:02d}" for i in range(10)]  # random weights: the classes mean nothing


def make_images(directory: str, n: int, seed: int = 0) -> List[str]:
    """Draw ``n`` pictures into ``directory`` (``img_000000.ppm`` ...); returns their names."""
    import torch

    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    names = []
    for i in range(n):
        background = torch.rand(3, 1, 1, generator=g) * 0.3
        image = background + torch.rand(3, SIZE, SIZE, generator=g) * 0.1
        cy, cx = (torch.randint(16, SIZE - 16, (2,), generator=g)).tolist()
        r = int(torch.randint(6, 16, (1,), generator=g))
        kind = i % 3
        if kind == 0:
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
        elif kind == 1:
            mask = ((ys - cy).abs() <= r) & ((xs - cx).abs() <= r)
        else:
            mask = ((xs + ys * (i % 2)) // 4) % 2 == 0
        colour = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
        image = torch.where(mask, colour.expand(3, SIZE, SIZE), image)
        pixels = (image.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).contiguous()
        name = f"img_{i:06d}.ppm"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"P6\n%d %d\n255\n" % (SIZE, SIZE) + _raw(pixels))
        names.append(name)
    return names


def _raw(pixels) -> bytes:
    try:
        return pixels.numpy().tobytes()
    except (ImportError, RuntimeError):  # a torch without numpy: slower, same bytes
        return bytes(pixels.flatten().tolist())


def read_ppm(path: str):
    """A binary PPM file as a normalised 3xHxW float tensor."""
    import torch

    with open(path, "rb") as f:
        data = f.read()
    fields = data.split(maxsplit=4)  # P6, width, height, maxval, pixels
    if len(fields) != 5 or fields[0] != b"P6":
        raise ValueError(f"{path} is not a binary PPM image")
    width, height = int(fields[1]), int(fields[2])
    pixels = data[len(data) - width * height * 3:]
    image = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(height, width, 3)
    return (image.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.25


def small_cnn():
    """The CNN of examples/image_classification.py, with random weights from a fixed seed."""
    import torch
    import torch.nn.functional as F

    class SmallCNN(torch.nn.Module):
        def __init__(self, num_classes: int = len(CLASSES)):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.head = torch.nn.Linear(64, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.relu(self.conv3(x))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return SmallCNN().eval()


def classify(model, paths: List[str], batch_size: int = 32) -> List[Tuple[str, float]]:
    """(class, probability) of each image, in batches."""
    import torch

    out: List[Tuple[str, float]] = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([read_ppm(p) for p in paths[start:start + batch_size]])
        with torch.no_grad():
            probabilities = torch.softmax(model(batch), dim=1)
        top = probabilities.max(dim=1)
        out += [(CLASSES[c], p) for p, c in zip(top.values.tolist(), top.indices.tolist())]
    return out


def worker(input_dir: str, output_dir: str, slice_size: int) -> None:
    import torch

    import aimaster
    from aimaster import inference as elastic_inference

    torch.set_num_threads(1)  # the demo runs several workers on a laptop's few cores
    model = small_cnn()
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".tsv") as out:
            for path, (label, p) in zip(paths, classify(model, paths)):
                out.write(f"{os.path.basename(path)}\t{label}\t{p:.4f}\n")
        client.commit_slice()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: python -m aimaster.demo_images worker INPUT_DIR OUTPUT_DIR SLICE_SIZE")
