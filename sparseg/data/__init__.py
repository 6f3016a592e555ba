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
from sparseg.data.sparse import (
    ENCODINGS,
    LabelFormatError,
    from_ignore255,
    from_reference,
    from_shifted,
    inspect_labels,
    rasterize,
    to_canonical,
    to_reference,
)
from sparseg.data.sparsify import object_points, random_clicks, scribbles, sparsify_list
from sparseg.data.splits import SplitEntry, SplitError, check_disjoint, detect_layout, read_split, write_splits
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
    "ENCODINGS",
    "FIELDS",
    "SYNTHETIC_CLASSES",
    "DataError",
    "DatasetSpec",
    "EvalTransform",
    "LabelFormatError",
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
    "detect_layout",
    "from_ignore255",
    "from_reference",
    "from_shifted",
    "half_area_boxes",
    "inspect_labels",
    "labelids_to_trainids",
    "make_synthetic_dataset",
    "object_points",
    "random_area_boxes",
    "random_clicks",
    "rasterize",
    "read_split",
    "scribbles",
    "shard_indices",
    "sparsify_list",
    "strong_photometric",
    "to_canonical",
    "to_reference",
    "voc_colormap",
    "write_splits",
]
