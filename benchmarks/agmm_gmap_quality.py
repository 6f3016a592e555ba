"""How good are AGMM's targets on real sparse labels? For training images of a sparse list, compare the
GMM maps G (agmm.md §5) computed from a checkpoint's features and the image's sparse labels, and the
checkpoint's own prediction, with the dense masks at unlabeled pixels (docs/benchmarks.md).

    python benchmarks/agmm_gmap_quality.py runs/camvid/agmm_points_s0/last.pt \\
        --dense-list train.txt [--sparse-list runs/camvid/sparse/points/train.txt] [--every 4]

Images and labels are resized like the training recipe (long side ``data.base_size``, labels nearest);
only pixels whose dense class is labeled somewhere in the image count (G is 0 for the other classes).
Prints the accuracy of argmax G and of argmax P there, and the mean G of the true class against the mean
largest G of a wrong class.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from sparseg.build import load_trained
from sparseg.data import EvalTransform, build_dataset
from sparseg.labels import UNLABELED
from sparseg.methods.agmm import gaussian_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dense-list", required=True, help="the dense list the sparse labels were made from")
    parser.add_argument("--sparse-list", help="default: the checkpoint's data.train_list")
    parser.add_argument("--variance", choices=["fixed", "adaptive"], default="fixed")
    parser.add_argument("--every", type=int, default=4, help="use every N-th image")
    args = parser.parse_args()
    cfg, state, model, _ = load_trained(args.checkpoint, [], None)
    k = state["num_classes"]
    sparse_cfg = cfg.data.model_copy(update={"train_list": args.sparse_list or cfg.data.train_list})
    dense_cfg = cfg.data.model_copy(update={"train_list": args.dense_list, "label_format": "dense"})
    sparse = build_dataset(sparse_cfg, "train_list", labeled=True, transform=EvalTransform())
    dense = build_dataset(dense_cfg, "train_list", labeled=True, transform=EvalTransform())
    if len(sparse) != len(dense):
        raise SystemExit(f"{len(sparse)} sparse and {len(dense)} dense images: not the same list")
    counts = {"pixels": 0, "g_right": 0, "p_right": 0, "g_true": 0.0, "g_wrong": 0.0}
    model.eval()
    with torch.inference_mode():
        for index in range(0, len(sparse), args.every):
            item, truth = sparse[index], dense[index]["mask"]
            scale = cfg.data.base_size / max(truth.shape) if cfg.data.base_size else 1.0
            image = F.interpolate(item["image"][None], scale_factor=scale, mode="bilinear", align_corners=False)
            size = image.shape[-2:]
            labels = F.interpolate(item["mask"][None, None].float(), size=size, mode="nearest")[0].long()
            truth = F.interpolate(truth[None, None].float(), size=size, mode="nearest")[0].long()
            out = model(image)
            probs = F.interpolate(out["pred"], size=size, mode="bilinear", align_corners=False).softmax(1)
            gmm = gaussian_maps(out["fts"], labels, k, args.variance, probs=probs, tags=item["tags"][None])
            valid = truth < k
            present = gmm.present[0][truth.clamp(max=k - 1)] > 0
            pixels = (labels == UNLABELED) & valid & present
            onehot = F.one_hot(truth.clamp(max=k - 1), k).permute(0, 3, 1, 2).bool()
            counts["pixels"] += int(pixels.sum())
            counts["g_right"] += int((gmm.maps.argmax(1) == truth)[pixels].sum())
            counts["p_right"] += int((probs.argmax(1) == truth)[pixels].sum())
            counts["g_true"] += float(gmm.maps.masked_fill(~onehot, 0).sum(1)[pixels].sum())
            counts["g_wrong"] += float(gmm.maps.masked_fill(onehot, 0).amax(1)[pixels].sum())
    n = max(counts["pixels"], 1)
    print(f"{args.checkpoint}: {counts['pixels']} unlabeled pixels of classes labeled in their image")
    print(f"accuracy argmax G {counts['g_right'] / n:.3f}, argmax P {counts['p_right'] / n:.3f}; "
          f"mean G(true class) {counts['g_true'] / n:.3f}, mean max G(wrong class) {counts['g_wrong'] / n:.3f}")


if __name__ == "__main__":
    main()
