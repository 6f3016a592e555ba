"""The model's help: per-pixel prediction and certainty of a trained checkpoint, computed on demand, cached;
and the "label next" ranking of the images, scored in the background and cached per checkpoint."""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparseg.annotate.store import ImageEntry
from sparseg.config import EvalConfig
from sparseg.data.datasets import to_rgb
from sparseg.eval import predict_probs
from sparseg.serialization import write_atomic
from sparseg.stats import entropy

BALANCE_WEIGHT = 0.5  # score = uncertainty + BALANCE_WEIGHT * class balance, both in [0, 1]
SAVE_EVERY = 25  # images scored between writes of the ranking cache (it holds every image: rewriting it is O(N))


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
            result = self._forward(path)
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return result

    def compute(self, path: Path) -> np.ndarray:
        """The maps of ``path``, not cached (the ranking scores every image once)."""
        with self._lock:
            return self._forward(path)

    def _forward(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            rgb = np.asarray(to_rgb(image, path))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            probs = predict_probs(self.model, x, self.num_classes, self.eval_cfg).float().cpu()
        maxprob, label = probs[0].max(0)
        certainty = (1 - entropy(probs)[0] / math.log(self.num_classes) if self.num_classes > 1
                     else torch.ones_like(maxprob))
        result = torch.stack([label.float(), maxprob * 255, certainty.clamp(0, 1) * 255]).round()
        return result.to(torch.uint8).numpy()


def image_stats(maps: np.ndarray, num_classes: int) -> dict:
    """What the ranking needs of one image's maps: mean uncertainty (normalised entropy) and the share of
    pixels predicted as each class."""
    hist = np.bincount(maps[0].ravel(), minlength=num_classes)[:num_classes]
    return {"uncertainty": float(1 - maps[2].mean() / 255), "classes": (hist / hist.sum()).round(6).tolist()}


def rank_scores(stats: dict[str, dict]) -> dict[str, dict]:
    """Scores of the scored images: ``uncertainty + BALANCE_WEIGHT * balance``.

    ``balance`` is the mean rarity of an image's predicted pixels: a class's rarity is ``-log`` of its share of
    all predicted pixels so far, divided by that of the rarest predicted class, so an image covered by the
    rarest class has balance 1 and one of the most common classes about 0.
    """
    if not stats:
        return {}
    shares = np.array([s["classes"] for s in stats.values()])
    pool = shares.mean(0)
    rarity = np.where(pool > 0, -np.log(np.where(pool > 0, pool, 1)), 0)
    rarity = rarity / rarity.max() if rarity.max() > 0 else rarity
    scores = {}
    for image_id, s in stats.items():
        balance = float(np.dot(s["classes"], rarity))
        scores[image_id] = {"score": round(s["uncertainty"] + BALANCE_WEIGHT * balance, 4),
                            "uncertainty": round(s["uncertainty"], 4), "balance": round(balance, 4)}
    return scores


class Ranker:
    """Scores every image for "label next" in a background thread, one forward pass each, keeping the
    per-image statistics in ``cache`` (a JSON file per checkpoint) so a restart scores only new images."""

    def __init__(self, assist: ModelAssist, images: list[ImageEntry], cache: Path) -> None:
        self.assist, self.images, self.cache = assist, images, cache
        self._stats: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.error: str | None = None
        try:
            cached = json.loads(cache.read_text())["images"]
        except (OSError, ValueError, KeyError, TypeError):
            cached = {}
        for entry in images:
            if cached.get(entry.id, {}).get("file") == self._file_key(entry):
                self._stats[entry.id] = cached[entry.id]

    @staticmethod
    def _file_key(entry: ImageEntry) -> list[int]:
        stat = entry.path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="annotate-ranking", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Score the images not scored yet, in list order, writing the cache every ``SAVE_EVERY`` images and at
        the end; a failure stops the scoring and is reported."""
        unsaved = 0
        try:
            for entry in self.images:
                if entry.id in self._stats:
                    continue
                stats = image_stats(self.assist.compute(entry.path), self.assist.num_classes)
                with self._lock:
                    self._stats[entry.id] = {**stats, "file": self._file_key(entry)}
                unsaved += 1
                if unsaved == SAVE_EVERY:
                    self._save()
                    unsaved = 0
            if unsaved:
                self._save()
        except Exception as err:  # noqa: BLE001  shown in the page; the server keeps serving labels
            self.error = f"{type(err).__name__}: {err}"

    def _save(self) -> None:
        with self._lock:
            text = json.dumps({"images": self._stats})
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.cache, text.encode(), durable=False)

    def snapshot(self) -> dict:
        with self._lock:
            stats = dict(self._stats)
        return {"done": len(stats), "total": len(self.images), "error": self.error, "scores": rank_scores(stats)}
