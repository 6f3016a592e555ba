"""Data: split lists, dataset specs and datasets, augmentation, sampling, synthetic data, converters."""

from sparseg.data.convert import convert_cityscapes, labelids_to_trainids
from sparseg.data.datasets import (
    DATASETS,
    DataError,
    DatasetSpec,
    SegmentationDataset,
    build_dataset,
    create_dataset_spec,
    voc_colormap,
)
from sparseg.data.sampler import StreamSampler, shard_indices
from sparseg.data.splits import SplitEntry, SplitError, check_disjoint, read_split, write_splits
from sparseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset
from sparseg.data.transforms import (
    FIELDS,
    EvalTransform,
    TrainTransform,
    cutmix,
    half_area_boxes,
    random_area_boxes,
    strong_photometric,
)

__all__ = [
    "DATASETS",
    "FIELDS",
    "SYNTHETIC_CLASSES",
    "DataError",
    "DatasetSpec",
    "EvalTransform",
    "SegmentationDataset",
    "SplitEntry",
    "SplitError",
    "StreamSampler",
    "TrainTransform",
    "build_dataset",
    "check_disjoint",
    "convert_cityscapes",
    "create_dataset_spec",
    "cutmix",
    "half_area_boxes",
    "labelids_to_trainids",
    "make_synthetic_dataset",
    "random_area_boxes",
    "read_split",
    "shard_indices",
    "strong_photometric",
    "voc_colormap",
    "write_splits",
]
