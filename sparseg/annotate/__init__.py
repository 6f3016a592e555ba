"""`sparseg annotate`: a local browser tool for point and scribble labels, with a model's prediction as a guide.

The web part (``server``) needs the ``annotate`` extra (Starlette, uvicorn); the label store does not.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from sparseg.annotate.store import (
    ClassSet,
    ImageEntry,
    LabelError,
    LabelStore,
    dataset_classes,
    encode_png,
    find_images,
    load_classes,
)
from sparseg.config import ConfigError

__all__ = [
    "ClassSet",
    "ImageEntry",
    "LabelError",
    "LabelStore",
    "dataset_classes",
    "encode_png",
    "find_images",
    "load_classes",
    "run_annotate",
]


def run_annotate(args) -> int:
    """The ``sparseg annotate`` command (a checkpoint is loaded by ``sparseg.build.load_trained``, as in ``eval``
    and ``predict``)."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"sparseg annotate needs {' and '.join(missing)}: pip install 'sparseg[annotate]'")
    if args.classes and args.dataset:
        raise ConfigError("give the classes with --classes FILE or --dataset NAME, not both")
    classes = (load_classes(args.classes) if args.classes
               else dataset_classes(args.dataset) if args.dataset else None)
    root, images = find_images(args.images, args.root, args.dataset)
    state, assist = None, None
    if args.checkpoint:
        from sparseg.build import load_trained
        from sparseg.engine.checkpoint import CheckpointError

        cfg, state, model, _ = load_trained(args.checkpoint, [], args.model)
        if classes is None:
            classes = ClassSet(tuple(state["class_names"]), tuple(tuple(c) for c in state["palette"]))
        elif len(classes) != state["num_classes"]:
            raise CheckpointError(f"{args.checkpoint} predicts {state['num_classes']} classes but the class set "
                                  f"has {len(classes)}")
    if classes is None:
        raise ConfigError("name the classes: --classes FILE (YAML names + palette), --dataset NAME or --checkpoint")
    store = LabelStore(root, images, classes, args.out, exclusive=True)
    from sparseg.annotate.server import serve

    ranker = None
    if state is not None:
        from sparseg.annotate.assist import ModelAssist, Ranker
        from sparseg.engine.distributed import DistInfo, resolve_device

        device = resolve_device(cfg.train.device, DistInfo())
        assist = ModelAssist(model.to(device), cfg.eval, state["num_classes"], device)
        ranker = Ranker(assist, images, store.out / ".annotate" / f"ranking-{checkpoint_key(args)}.json")
        ranker.start()
    serve(store, assist, args.host, args.port, ranker=ranker)
    return 0


def checkpoint_key(args) -> str:
    """Names the ranking cache of a checkpoint file (path, size, time) and the model chosen from it."""
    path = Path(args.checkpoint).resolve()
    stat = path.stat()
    return hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{args.model}".encode()).hexdigest()[:16]
