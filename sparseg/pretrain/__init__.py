"""Self-supervised pretraining of the segmentation network on unlabeled images (docs/methods/pretrain.md).

Each module here is one pretraining method (``pretraining = True``), registered with the training methods
(``method.name``) and run by the same engine through ``sparseg pretrain``. At every checkpoint the method hands
the trainer ``OUT/pretrained.pt`` (encoder and decoder weights, ``checkpoint_files``); ``model.pretrained`` loads it.
"""
