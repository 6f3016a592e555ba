"""Where confident pseudo-labels come from: per class, the share of validation pixels a checkpoint predicts
with confidence >= THRESHOLD, and how many of those predictions are right (docs/benchmarks.md).

    python benchmarks/confidence_by_class.py runs/camvid/fixmatch_1_8_s0/last.pt [--threshold 0.95] [--every 4]

Validation images stand in for unlabeled ones; inference follows the checkpoint's ``eval.scales[0]``
(whole image, no flip), probabilities resized to the label size.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from sparseg.build import load_trained
from sparseg.data import EvalTransform, build_dataset, create_dataset_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--every", type=int, default=4, help="use every N-th validation image")
    args = parser.parse_args()
    cfg, _, model, _ = load_trained(args.checkpoint, [], None)
    spec = create_dataset_spec(cfg.data)
    dataset = build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform())
    k = spec.num_classes
    pixels, confident, right = torch.zeros(k), torch.zeros(k), torch.zeros(k)
    model.eval()
    with torch.inference_mode():
        for index in range(0, len(dataset), args.every):
            item = dataset[index]
            image, mask = item["image"][None], item["mask"]
            small = F.interpolate(image, scale_factor=cfg.eval.scales[0], mode="bilinear", align_corners=False)
            logits = F.interpolate(model(small)["pred"], size=mask.shape, mode="bilinear", align_corners=False)
            conf, pred = logits.softmax(1)[0].max(0)
            sure = conf >= args.threshold
            for c in range(k):
                is_c = mask == c
                pixels[c] += is_c.sum()
                confident[c] += (is_c & sure).sum()
                right[c] += (is_c & sure & (pred == c)).sum()
    print(f"| class | pixels with confidence >= {args.threshold} | of those, right |")
    print("|---|---|---|")
    for c, name in enumerate(spec.class_names):
        share = 100 * confident[c] / pixels[c].clamp_min(1)
        correct = 100 * right[c] / confident[c].clamp_min(1)
        print(f"| {name} | {share:.1f}% | {correct:.1f}% |")


if __name__ == "__main__":
    main()
