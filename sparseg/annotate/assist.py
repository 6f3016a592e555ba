"""The model's help: per-pixel prediction and certainty of a trained checkpoint, computed on demand, cached."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparseg.config import EvalConfig
from sparseg.eval import predict_probs


class ModelAssist:
    """Prediction maps of a model for image files, under the checkpoint's evaluation protocol.

    ``maps(key, path)`` returns three uint8 planes [3, H, W]: the predicted class, the maximum
    probability x 255 and the normalised certainty ``(1 - entropy / log K)`` x 255 (high = sure).
    The ``cache_size`` most recent results are kept; one forward pass runs at a time.
    """

    def __init__(self, model: torch.nn.Module, eval_cfg: EvalConfig, num_classes: int, device: torch.device,
                 cache_size: int = 64) -> None:
        self.model, self.eval_cfg, self.num_classes, self.device = model.eval(), eval_cfg, num_classes, device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def maps(self, key: str, path: Path) -> np.ndarray:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
            x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0).to(self.device)
            with torch.inference_mode():
                probs = predict_probs(self.model, x, self.num_classes, self.eval_cfg)[0].float().cpu()
            maxprob, label = probs.max(0)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(0)
            certainty = 1 - entropy / math.log(self.num_classes) if self.num_classes > 1 else torch.ones_like(maxprob)
            result = torch.stack([label.float(), maxprob * 255, certainty.clamp(0, 1) * 255]).round()
            result = result.to(torch.uint8).numpy()
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return result
