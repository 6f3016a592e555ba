"""Label value conventions used everywhere inside sparseg."""

IGNORE = 255  # void, crop padding: enters no loss and no metric
UNLABELED = 254  # sparse labels: an in-image pixel without annotation
