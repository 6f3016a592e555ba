"""Linear-probe mIoU of a config's model as built (random init, or ``model.pretrained``) on a labeled list.

The reference point for the probe that `sparseg pretrain` logs: the same probe on an untrained network.
    OMP_NUM_THREADS=1 python benchmarks/probe.py configs/camvid/pretrain.yaml
    OMP_NUM_THREADS=1 python benchmarks/probe.py configs/camvid/pretrain.yaml \
        --set model.pretrained=runs/camvid/pretrain/pretrained.pt
"""

from __future__ import annotations

import argparse

import torch

from sparseg.build import load_config
from sparseg.data import EvalTransform, build_dataset, create_dataset_spec
from sparseg.eval.probe import linear_probe
from sparseg.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--list", default=None, help="labeled list to probe on (default: data.val_list)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides + ([f"data.val_list={args.list}"] if args.list else []))
    spec = create_dataset_spec(cfg.data)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, spec.num_classes)
    dataset = build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform())
    result = linear_probe(model, dataset, spec.num_classes, "cpu", class_names=spec.class_names, seed=cfg.seed,
                          scale=cfg.eval.scales[0])
    print(f"{cfg.data.val_list}: {result.num_images} scored images, probe mIoU {result.miou:.2f}, "
          f"pixel accuracy {result.pixel_accuracy:.2f}")


if __name__ == "__main__":
    main()
