"""Self-supervised pretraining of the segmentation network on unlabeled images (docs/methods/pretrain.md).

Each module here is one pretraining method (``pretraining = True``), registered with the training methods
(``method.name``) and run by the same engine through ``sparseg pretrain``. The engine writes the encoder and
decoder weights to ``OUT/pretrained.pt`` at every checkpoint; ``model.pretrained`` loads that file.
"""
