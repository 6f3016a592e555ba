"""How good are a trained model's pseudo-labels on images whose masks we hold back, with and without class-mix
alignment (docs/methods/alignment.md, "Offline")?

Each checkpoint (its teacher where it has one) predicts every image of ``--list`` (default: the 321 held-out
training images of CamVid's splits/1_8/unlabeled.txt); the bias b is fitted from the predictions alone, exactly as
``sparseg pseudo-label`` does, for each setting: none, hard_share after 5 and 30 updates, mean_prob. The argmax
pseudo-labels are then scored against the true masks: mIoU, per-class IoU and each class's share of the
predictions next to the labeled prior π.

    python benchmarks/pseudo_label_quality.py /work/runs/payoff/s0/supervised/last.pt --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sparseg.build import load_trained
from sparseg.data import EvalTransform, build_dataset
from sparseg.engine.distributed import DistInfo, resolve_device
from sparseg.eval.metrics import ConfusionMatrix
from sparseg.pseudo_label import fit_bias, image_probs, sampled_log_probs

SETTINGS = {"none": ("none", 0), "hard_share@5": ("hard_share", 5), "hard_share@30": ("hard_share", 30),
            "mean_prob": ("mean_prob", 0)}


def score(checkpoint: str, images_list: str, stride: int) -> dict:
    cfg, _, model, name = load_trained(checkpoint, [], None)
    device = resolve_device(cfg.train.device, DistInfo())
    model = model.to(device)
    data = cfg.data.model_copy(update={"val_list": images_list})
    images = build_dataset(data, "val_list", labeled=True, transform=EvalTransform())
    labeled_key = "labeled_list" if cfg.data.labeled_list else "train_list"
    labeled = build_dataset(cfg.data, labeled_key, labeled=True, transform=EvalTransform())
    counts = torch.from_numpy(labeled.class_pixel_counts()).double()
    prior = (counts / counts.sum()).float()
    k = images.spec.num_classes
    sampled = sampled_log_probs(image_probs(model, images, cfg, device, "class mix"), stride)
    biases = {s: fit_bias(sampled, prior, align, updates) for s, (align, updates) in SETTINGS.items()}
    confusion = {s: ConfusionMatrix(k, device=device) for s in SETTINGS}
    for index, probs in image_probs(model, images, cfg, device, "scoring"):
        mask = images[index]["mask"].to(device)
        log_probs = probs.clamp_min(1e-12).log()
        for setting, bias in biases.items():
            confusion[setting].update((log_probs + bias.to(device)[:, None, None]).argmax(0), mask)
    rows = {}
    for setting, matrix in confusion.items():
        iou = matrix.iou()
        predicted = matrix.matrix.sum(0).double()
        rows[setting] = {"miou": float(100 * iou.nanmean()), "iou": [round(100 * v, 2) for v in iou.tolist()],
                         "share": [round(100 * v, 2) for v in (predicted / predicted.sum()).tolist()],
                         "bias": [round(v, 3) for v in biases[setting].tolist()]}
    return {"checkpoint": checkpoint, "model": name, "prior": [round(100 * v, 2) for v in prior.tolist()],
            "class_names": list(images.spec.class_names), "settings": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--list", default="splits/1_8/unlabeled.txt", help="images to label, with their masks")
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args()
    results = []
    for checkpoint in args.checkpoints:
        result = score(checkpoint, args.list, args.stride)
        results.append(result)
        names = result["class_names"]
        print(f"\n{checkpoint} ({result['model']})")
        print(f"{'setting':<15} {'mIoU':>6}  " + " ".join(f"{n[:6]:>6}" for n in names))
        print(f"{'prior %':<15} {'':>6}  " + " ".join(f"{v:>6.1f}" for v in result["prior"]))
        for setting, row in result["settings"].items():
            print(f"{setting:<15} {row['miou']:>6.2f}  " + " ".join(f"{v:>6.1f}" for v in row["iou"]))
            print(f"{'  share %':<15} {'':>6}  " + " ".join(f"{v:>6.1f}" for v in row["share"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
