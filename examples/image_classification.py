"""The seed's PyTorch image-classification example, corrected and self-contained.

    aimaster run -n 2 -- python examples/image_classification.py INPUT_DIR OUTPUT_DIR [options]
    python examples/image_classification.py INPUT_DIR OUTPUT_DIR [options]     # standalone

Every image under INPUT_DIR is classified by a small CNN (built here, random weights from a fixed
seed, so no download is needed: swap in your own model); the top-5 classes of each image are written
to OUTPUT_DIR/<slice id>.txt, one slice per file, published exactly once. A file PIL cannot read is
reported as "invalid" in its slice's output instead of being silently skipped.

What the seed got wrong, and what changed (see docs/migration.md):
* ``DataWriter.close`` called ``self.pf_clinet.commit_slice`` (typo: AttributeError on the first
  commit) and ``_create_new_writer`` was called without its ``new_slice_id`` argument;
* it wrote with ``self.categories``, which lived on another class, and opened ``output_dir/<slice>``
  directly: a retried slice could leave a half-written or duplicate file. Outputs now go through
  the atomic output helper, published only when the slice's commit wins;
* the model was a resnet50 called "InceptionV3" and needed a weights file and imagenet_classes.txt;
* reading ran in the main process; here a ``DataLoader`` with worker processes decodes images, each
  worker claiming whole slices, and ``dataset.track(loader)`` commits a slice once all its images
  were classified and their lines written.
"""

import argparse

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from aimaster import inference as elastic_inference

IMAGE_SIZE = 64
NUM_CLASSES = 10
CATEGORIES = [f"class_{i:02d}" for i in range(NUM_CLASSES)]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def preprocess(path: str) -> dict:
    """Image file -> normalized 3x64x64 tensor (runs in the DataLoader workers)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError):
        return {"image": torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE), "valid": False}
    tensor = pixels.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1).float() / 255.0
    return {"image": (tensor - MEAN) / STD, "valid": True}


class SmallCNN(torch.nn.Module):
    """Three conv blocks and a linear head: enough compute to be a real CPU-bound model."""

    def __init__(self, num_classes: int = NUM_CLASSES):
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


class ImageClassifier:
    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)  # random but reproducible weights: every worker has the same model
        self.model = SmallCNN().eval()

    def predict(self, images):
        with torch.no_grad():
            probabilities = F.softmax(self.model(images), dim=1)
        return torch.topk(probabilities, 5, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--slice-size", type=int, default=32, help="images per slice")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pf_client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=args.input_dir, output_dir=args.output_dir, slice_size=args.slice_size,
        auto_create_output_dir=True))
    dataset = pf_client.create_torch_dataset(transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    classifier = ImageClassifier()

    stream = dataset.track(loader)
    for batch in stream:
        top5_prob, top5_catid = classifier.predict(batch["image"])
        for i, (slice_id, path) in enumerate(zip(batch["slice_id"], batch["path"])):
            out = stream.output(slice_id, suffix=".txt")  # staged; published when the slice commits
            if not batch["valid"][i]:
                out.write(f"{path}\tinvalid\n")
                continue
            top5 = ", ".join(f"{CATEGORIES[c]}: {p:.4f}" for p, c in zip(top5_prob[i].tolist(), top5_catid[i].tolist()))
            out.write(f"{path}\t{top5}\n")
    print(f"All file data have been processed ({stream.committed} slices committed here).")


if __name__ == "__main__":
    main()
