"""Command line: ``sparseg train|pretrain|eval|predict|demo|splits|analyze|depth|sparsify|inspect-labels|annotate``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from sparseg.threads import apply_thread_policy, prepare_openmp

SPLIT_LAYOUTS = ("camvid", "cityscapes", "voc", "folder", "synthetic")  # `sparseg splits` tries them in this order


def _key_value(text: str) -> str:
    """An argparse type: one ``--set`` item, which must be KEY=VALUE (so a config path is not swallowed)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not KEY=VALUE; give the positional arguments before --set (or end --set with --)"
        )
    return text


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", nargs="+", action="extend", type=_key_value, default=[], metavar="KEY=VALUE", dest="overrides",
        help="override config keys (repeatable), e.g. --set data.root=/data/voc train.iters=100; "
             "text keys take the value verbatim, others parse it as YAML",
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" for options that have a meaningful default (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sparseg")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparseg", description="Label-efficient semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"sparseg {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name, help_text, example, out_note in (
        ("train", "train a model from a YAML config", "configs/camvid/supervised.yaml", ""),
        ("pretrain", "self-supervised pretraining on unlabeled images (docs/methods/pretrain.md)",
         "configs/camvid/pretrain_mim.yaml", "; OUT/pretrained.pt is what model.pretrained loads"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help=f"YAML config, e.g. {example}")
        _add_set(p)
        p.add_argument("--out", help=f"run directory (default: the config's `out`, else runs/<config name>){out_note}")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        p.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: accept config keys changed since OUT/last.pt (recorded in "
                            "OUT/config_history.yaml); eval cadence, logging, device and workers may change without it")
        p.add_argument("--overwrite", action="store_true",
                       help="start over; the old run's files move into OUT/previous-<time>/")

    p = sub.add_parser("eval", help="evaluate a checkpoint on a validation list")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by sparseg train")
    _add_set(p)
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.add_argument("--model", help="which of the method's models to score, e.g. teacher, student "
                                   "(default: the method's first)")

    p = sub.add_parser("predict", help="write palette PNG masks (and overlays) for images")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by sparseg train")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder for the masks: OUT/<path inside the input folder>.png")
    p.add_argument("--overlay", action="store_true", help="also write image/mask overlays (<name>.overlay.jpg)")
    p.add_argument("--overwrite", action="store_true", help="replace predictions that exist in OUT")
    p.add_argument("--model", help="which of the method's models to use (default: the method's first)")
    _add_set(p)

    p = sub.add_parser("pseudo-label", help="label a list of images with a trained model, class-mix aligned "
                                            "(docs/methods/alignment.md)")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by sparseg train (its teacher where it has one)")
    p.add_argument("images", help="split list or image folder to label (relative to data.root, as in training)")
    p.add_argument("--out", required=True, help="output folder: OUT/<image path>.png, pseudo.txt, train.txt, "
                                                "manifest.json")
    p.add_argument("--labeled", help="labeled list: the class prior and the first lines of OUT/train.txt "
                                     "(default: the checkpoint's data.labeled_list or data.train_list)")
    p.add_argument("--align", choices=["none", "hard_share", "mean_prob"], default="hard_share",
                   help="class-mix alignment of the predictions to the labeled prior (default: hard_share)")
    p.add_argument("--updates", type=int, default=30, help="hard_share: bias updates (default: 30)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="pixels whose aligned confidence is below this are written as 255, ignore (default: 0)")
    p.add_argument("--per-class", action="store_true",
                   help="also keep each class's most confident pixels at the share --threshold keeps overall "
                        "(docs/methods/alignment.md, \"Per-class filter\")")
    p.add_argument("--stride", type=int, default=4, help="pixel stride of the class-mix sample (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace pseudo-labels that exist in OUT")
    p.add_argument("--model", help="which of the method's models to use (default: the method's first)")
    _add_set(p)

    p = sub.add_parser("demo", help="train and evaluate on generated data (CPU, no downloads)")
    p.add_argument("--method", default="supervised",
                   help="a method name (README, Methods), optionally NAME+depmatch, e.g. dgcl, fixmatch+depmatch; "
                        "a pretraining method (ddep, mim) pretrains, then fine-tunes from scratch and from it")
    p.add_argument("--out", default="runs/demo", help="parent folder of the run directory OUT/METHOD")
    p.add_argument("--iters", type=int, help="training iterations (default: the demo's own)")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--from-supervised", action="store_true",
                   help="semi-supervised methods: start from the supervised baseline with class-mix alignment, "
                        "the per-class filter and rare-class copy-paste, beside the baseline trained as long "
                        "(docs/methods/alignment.md)")

    p = sub.add_parser("analyze", help="feature-clustering scores of a checkpoint's decoder features (DGCL paper)")
    p.add_argument("checkpoint", help="a last.pt or best.pt written by sparseg train")
    _add_set(p)
    p.add_argument("--samples", type=int, default=10_000, help="pixels sampled from the validation set")
    p.add_argument("--out", help="output folder (default: analysis/ next to the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixel sample and the embedding")
    p.add_argument("--model", help="which of the method's models to analyse, e.g. teacher, student "
                                   "(default: the method's first)")
    p.add_argument("--embedding", choices=["pca", "tsne"], default="pca", help="2-D embedding for the plot")

    p = sub.add_parser("splits", help="split a list into labeled.txt and unlabeled.txt")
    p.add_argument("list", help="the full labeled list, e.g. root/train.txt")
    p.add_argument("--labeled", required=True, help="a fraction like 1/8 or a count like 92")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice")
    p.add_argument("--out", required=True, help="folder for labeled.txt and unlabeled.txt")
    p.add_argument("--root", help="data root the list is relative to (default: the list's folder)")
    p.add_argument("--dataset", choices=SPLIT_LAYOUTS,
                   help="dataset layout, for id or image-only lists (default: the first that resolves the list)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split in OUT")

    p = sub.add_parser("depth", help="compute normalised depth maps for a split list (DepMatch; needs transformers)")
    p.add_argument("list", help="split list of the images")
    p.add_argument("--model", help="transformers depth estimator, local folder or hub id "
                                   "(default: depth-anything/Depth-Anything-V2-Small-hf)")
    p.add_argument("--out", required=True, help="depth folder (use it as data.depth_dir)")
    p.add_argument("--root", help="data root the list is relative to (default: the list's folder)")
    p.add_argument("--dataset", default="folder", help="dataset kind, for id lists (voc, cityscapes, ...)")
    p.add_argument("--input-size", type=int, default=518, help="estimator input size (518 as released)")
    p.add_argument("--format", choices=["png16", "npy"], default="png16", help="file format of the depth maps")
    p.add_argument("--kind", choices=["disparity", "depth"], default="disparity",
                   help="what the estimator outputs; depth is stored as 1/(d+eps)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--calibrate", action="store_true",
                   help="write no maps, only calibration.json with depmatch.unit = median(q99 - q1) of the raw output")

    p = sub.add_parser("sparsify", help="synthesise sparse labels (points, clicks, scribbles) from a dense list")
    p.add_argument("list", help="split list with dense masks")
    p.add_argument("--kind", required=True, choices=["points", "clicks", "scribbles"], help="kind of sparse label")
    p.add_argument("--seed", type=int, required=True, help="seed of the synthesis (recorded in the manifest)")
    p.add_argument("--out", required=True, help="output folder: masks, train.txt, manifest.json")
    p.add_argument("--per-image", type=int, help="clicks: labeled discs per image (default 50)")
    p.add_argument("--per-object", type=int, help="points: points per object (default 1)")
    p.add_argument("--width", type=float, help="disc diameter or scribble width in pixels (default 3)")
    p.add_argument("--min-area", type=int, help="points/scribbles: smallest object labeled (default 9 / 64)")
    p.add_argument("--placement", choices=["interior", "center"], help="points: where in the object (default interior)")
    p.add_argument("--method", choices=["skeleton", "walk"], help="scribbles: shape (default skeleton)")
    p.add_argument("--stratified", action="store_true", help="clicks: one per present class first")
    p.add_argument("--void-as", choices=["unlabeled", "ignore"], help="void pixels become 254 (default) or 255")
    p.add_argument("--root", help="data root the list is relative to (default: the list's folder)")
    p.add_argument("--dataset", default="folder", help="dataset kind (voc, cityscapes, camvid, folder, ...)")
    p.add_argument("--num-classes", type=int, help="class count of a folder dataset")
    p.add_argument("--overwrite", action="store_true", help="replace labels made with other settings in OUT")

    p = sub.add_parser("inspect-labels", help="value histogram, labeled fraction and guessed format of label PNGs")
    p.add_argument("paths", nargs="+", metavar="PNG_OR_DIR", help="label PNG files or folders (searched recursively)")
    p.add_argument("--num-classes", type=int, required=True, help="K (VOC 21, Cityscapes 19, CamVid 11)")
    p.add_argument("--max-files", type=int, default=1000, help="inspect at most this many, evenly spread")

    p = sub.add_parser("annotate", help="label images with points and scribbles in the browser (docs/annotate.md)")
    p.add_argument("images", help="image folder, or a split list of images")
    p.add_argument("--out", required=True, help="label folder: sparse PNGs, train.txt, manifest.json; reopen to resume "
                                                "(one server at a time)")
    p.add_argument("--classes", help="YAML file: names: [...] and optionally palette: [[r, g, b], ...]")
    p.add_argument("--dataset", help="use a dataset's classes and list rules (camvid, voc, cityscapes, ...)")
    p.add_argument("--root", help="data root a split list is relative to (default: the list's folder)")
    p.add_argument("--checkpoint", help="show this model's prediction and where it is unsure, rank the images by "
                                        "what a label would teach it, accept its sure labels")
    p.add_argument("--model", help="which of the checkpoint's models to use")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (others: a warning, no authentication)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    return parser


def cmd_train(args, pretraining: bool = False) -> int:
    from sparseg.build import load_config, resolve
    from sparseg.config import ConfigError
    from sparseg.engine.trainer import train
    from sparseg.methods import list_methods, method_class

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(args.config, overrides)
    run = resolve(cfg)
    if run.method_class.pretraining != pretraining:
        names = ", ".join(n for n in list_methods() if method_class(n).pretraining)
        hint = (f"`sparseg pretrain` runs pretraining methods ({names}); use `sparseg train`" if pretraining
                else "it is a pretraining method: use `sparseg pretrain`")
        raise ConfigError(f"{args.config}: method.name={cfg.method['name']}: {hint}")
    if args.allow_config_change and not args.resume:
        raise ConfigError("--allow-config-change applies to --resume only")
    result = train(*run, resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    if pretraining:
        print(f"pretrained weights: {Path(cfg.out) / 'pretrained.pt'} (use as model.pretrained)")
    if result is not None:
        cap = cfg.train.max_val_images
        part = (f" over {result.num_images} validation images (train.max_val_images={cap}; "
                f"sparseg eval {Path(cfg.out) / 'best.pt'} scores the whole list)") if cap else ""
        print(f"{'probe mIoU' if pretraining else 'mIoU'}: {result.miou:.2f}{part}")
    return 0


def cmd_pretrain(args) -> int:
    return cmd_train(args, pretraining=True)


def cmd_eval(args) -> int:
    from sparseg.build import inference_device, load_trained
    from sparseg.data import EvalTransform, build_dataset, create_dataset_spec
    from sparseg.engine.checkpoint import CheckpointError
    from sparseg.eval import evaluate, format_table

    if args.json:
        _check_writable(Path(args.json), "--json")
    cfg, state, model, name = load_trained(args.checkpoint, args.overrides, args.model)
    if cfg.data.val_list is None:
        raise CheckpointError("no data.val_list: pass --set data.val_list=LIST")
    spec = create_dataset_spec(cfg.data)
    if spec.num_classes != state["num_classes"]:
        raise CheckpointError(
            f"the dataset has {spec.num_classes} classes but {args.checkpoint} predicts {state['num_classes']}"
        )
    device = inference_device(cfg)
    dataset = build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform())
    result = evaluate(model.to(device), dataset, cfg.eval, spec.num_classes, device, progress=True,
                      class_names=spec.class_names)
    print(f"{args.checkpoint} ({name}) on {Path(cfg.data.root) / cfg.data.val_list}: {len(dataset)} images, "
          f"{cfg.eval.mode} inference, scales {cfg.eval.scales}, flip {cfg.eval.flip}, "
          f"mIoU over {cfg.eval.miou_over} classes")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "model": name, **result.to_dict()},
                                              indent=2))
    print(format_table(result))
    return 0


def _check_writable(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done (nothing is left behind)."""
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise OSError(f"{flag} {path}: cannot write this file ({err.strerror}); nothing was done") from None
    if not existed:
        path.unlink()


def _check_num_classes(value: int | None) -> None:
    if value is not None and not 1 <= value <= 254:
        from sparseg.config import ConfigError

        raise ConfigError(f"--num-classes {value}: must be in 1..254 (254 and 255 are reserved label values)")


def _image_paths(inputs: list[str]) -> list[Path]:
    from sparseg.eval.predict import input_images

    return [path for path, _ in input_images(inputs)]


def cmd_predict(args) -> int:
    from sparseg.build import predict_files

    print(predict_files(args.checkpoint, args.inputs, args.out, overlay=args.overlay, overwrite=args.overwrite,
                        overrides=args.overrides, model_name=args.model).summary())
    return 0


def cmd_pseudo_label(args) -> int:
    from sparseg.build import inference_device, load_trained
    from sparseg.pseudo_label import PseudoLabelError, run_pseudo_label

    if not 0 <= args.threshold <= 1 or args.updates < 0 or args.stride < 1:
        raise PseudoLabelError("--threshold must lie in [0, 1], --updates be >= 0 and --stride >= 1")
    cfg, _, model, name = load_trained(args.checkpoint, args.overrides, args.model)
    labeled = args.labeled or cfg.data.labeled_list or cfg.data.train_list
    device = inference_device(cfg)
    manifest = run_pseudo_label(model.to(device), cfg, args.checkpoint, args.images, Path(args.out), labeled,
                                args.align, args.threshold, args.updates, args.stride, args.overwrite, device,
                                per_class=args.per_class)
    names = manifest["class_names"]
    print(f"{manifest['num_images']} pseudo-labels from the {name} of {args.checkpoint} in {args.out} "
          f"(align {args.align}; {100 * manifest['ignored_fraction']:.1f}% ignored)")
    print("class: prior / argmax share before / pseudo-label share (%)")
    for c, class_name in enumerate(names):
        print(f"  {class_name}: {100 * manifest['prior'][c]:.1f} / {100 * manifest['argmax_share_before'][c]:.1f}"
              f" / {100 * manifest['pseudo_label_share'][c]:.1f}")
    print(f"train on them: --set data.train_list={Path(args.out).resolve() / 'train.txt'}")
    return 0


def cmd_demo(args) -> int:
    from sparseg.demo import run_demo

    run_demo(method=args.method, out=Path(args.out), iters=args.iters, seed=args.seed,
             from_supervised=args.from_supervised)
    return 0


def cmd_analyze(args) -> int:
    from sparseg.build import inference_device, load_trained
    from sparseg.data import EvalTransform, build_dataset
    from sparseg.engine.checkpoint import CheckpointError
    from sparseg.eval.analyze import analyze_features

    cfg, state, model, name = load_trained(args.checkpoint, args.overrides, args.model)
    if cfg.data.val_list is None:
        raise CheckpointError("no data.val_list: pass --set data.val_list=LIST")
    dataset = build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform())
    device = inference_device(cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "analysis"
    scores = analyze_features(model.to(device), dataset, cfg.eval, state["class_names"], state["palette"], out,
                              args.samples, args.seed, device, args.embedding)
    print(f"{args.checkpoint} ({name}): {scores.num_pixels} pixels from {scores.num_images} images; "
          f"{out / 'analysis.json'}, {out / 'embedding.png'}")
    print(f"silhouette: {scores.silhouette:.4f}")
    print(f"calinski_harabasz: {scores.calinski_harabasz:.2f}")
    print(f"davies_bouldin: {scores.davies_bouldin:.4f}")
    return 0


def cmd_splits(args) -> int:
    from sparseg.config import DataConfig
    from sparseg.data import create_dataset_spec, detect_layout, write_splits

    list_path = Path(args.list)
    root = Path(args.root) if args.root else list_path.parent
    specs = [create_dataset_spec(DataConfig(dataset=name, root=str(root), num_classes=1 if name == "folder" else None))
             for name in ([args.dataset] if args.dataset else SPLIT_LAYOUTS)]  # classes do not matter to a split
    spec = detect_layout(list_path, root, specs) if len(specs) > 1 else specs[0]
    n_labeled, n_unlabeled = write_splits(list_path, root, spec, args.labeled, args.seed, Path(args.out),
                                          args.overwrite)
    print(f"wrote {n_labeled} labeled and {n_unlabeled} unlabeled entries to {args.out}")
    return 0


def cmd_depth(args) -> int:
    from sparseg.depth_estimation import DEFAULT_ESTIMATOR, compute_depth
    from sparseg.engine.distributed import DistInfo, resolve_device

    result = compute_depth(
        args.list, args.out, args.model or DEFAULT_ESTIMATOR, args.root, args.dataset, args.input_size,
        args.format, args.kind, resolve_device(args.device, DistInfo()), args.calibrate,
    )
    if args.calibrate:
        print(f"depmatch.unit: {result['unit']:.4g} (median q99 - q1 of {result['images']} images; "
              f"{Path(args.out) / 'calibration.json'})")
    else:
        print(f"wrote {len(result['images'])} depth maps and manifest.json to {args.out}; median raw range "
              f"q99 - q1: {result['median_range']:.4g} (with Depth Anything V2 Small, this is depmatch.unit)")
    return 0


# sparsify options -> generator keyword, per kind (sparseg.data.sparsify)
SPARSIFY_OPTIONS = {
    "clicks": {"per_image": "n", "width": "diameter", "stratified": "stratified", "void_as": "void_as"},
    "points": {"per_object": "per_object", "width": "diameter", "min_area": "min_area", "placement": "placement",
               "void_as": "void_as"},
    "scribbles": {"width": "width", "min_area": "min_area", "method": "method", "void_as": "void_as"},
}


def cmd_sparsify(args) -> int:
    from sparseg.config import ConfigError, DataConfig
    from sparseg.data import create_dataset_spec, sparsify_list

    options = SPARSIFY_OPTIONS[args.kind]
    given = {name for name in ("per_image", "per_object", "width", "min_area", "placement", "method",
                               "stratified", "void_as") if getattr(args, name) not in (None, False)}
    if given - set(options):
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(given - set(options)))
        raise ConfigError(f"{flags} do(es) not apply to --kind {args.kind}")
    params = {options[name]: getattr(args, name) for name in given}
    _check_num_classes(args.num_classes)
    if args.dataset == "folder" and args.num_classes is None:
        raise ConfigError("--dataset folder (the default) needs --num-classes K, the class count of the masks "
                          "(or name a built-in layout with --dataset)")
    list_path = Path(args.list)
    root = Path(args.root) if args.root else list_path.parent
    spec = create_dataset_spec(DataConfig(dataset=args.dataset, root=str(root), num_classes=args.num_classes))
    manifest = sparsify_list(list_path, root, spec, args.kind, args.seed, args.out, args.overwrite, **params)
    summary = manifest["summary"]
    per_class = ", ".join(f"{name} {n}" for name, n in summary["images_labeling_class"].items())
    print(f"{summary['images']} images, labeled fraction mean {summary['labeled_fraction_mean']:.3%} "
          f"(min {summary['labeled_fraction_min']:.3%}, max {summary['labeled_fraction_max']:.3%})")
    print(f"images labeling each class: {per_class}")
    print(f"images with a present but unlabeled class (suppressed by agmm's absent term): "
          f"{summary['images_with_present_unlabeled_class']}")
    print(f"wrote {Path(args.out) / 'train.txt'} and manifest.json; train with "
          f"--set data.train_list={Path(args.out).resolve() / 'train.txt'} data.label_format=sparse")
    return 0


def cmd_inspect_labels(args) -> int:
    from sparseg.data import inspect_labels

    _check_num_classes(args.num_classes)
    paths = _image_paths(args.paths)
    if len(paths) > args.max_files:
        paths = [paths[i * len(paths) // args.max_files] for i in range(args.max_files)]
    print(inspect_labels(paths, args.num_classes).summary())
    return 0


def cmd_annotate(args) -> int:
    from sparseg.annotate import run_annotate

    return run_annotate(args)


COMMANDS = {
    "train": cmd_train,
    "pretrain": cmd_pretrain,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "demo": cmd_demo,
    "splits": cmd_splits,
    "analyze": cmd_analyze,
    "sparsify": cmd_sparsify,
    "inspect-labels": cmd_inspect_labels,
    "depth": cmd_depth,
    "annotate": cmd_annotate,
    "pseudo-label": cmd_pseudo_label,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (config, data, checkpoints): reported in one line, no traceback."""
    from sparseg.config import ConfigError
    from sparseg.data import DataError, SplitError
    from sparseg.engine.checkpoint import CheckpointError
    from sparseg.engine.rundir import RunDirError
    from sparseg.engine.trainer import TrainingError
    from sparseg.eval.predict import PredictError
    from sparseg.models import WeightsError
    from sparseg.pseudo_label import PseudoLabelError
    from sparseg.registry import UnknownNameError

    return (ConfigError, DataError, SplitError, CheckpointError, RunDirError, TrainingError, PredictError,
            PseudoLabelError, WeightsError, UnknownNameError, FileNotFoundError, OSError)


def describe(err: BaseException) -> str:
    """One line for the user; errors raised in DataLoader workers arrive wrapped in a traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


@contextlib.contextmanager
def _report_loads():
    """Library messages of the ``sparseg`` logger (e.g. what ``model.pretrained`` loaded): one plain line each on
    stderr while a command runs, from the main process only (torchrun's other ranks keep warnings). The logger
    is restored afterwards, so ``main`` called in-process (tests, notebooks) leaves no handler on a closed stream."""
    import logging

    log = logging.getLogger("sparseg")
    saved = log.level, log.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    prepare_openmp()  # before anything imports torch
    args = build_parser().parse_args(argv)
    from sparseg.data.errors import print_data_warnings  # after prepare_openmp: sparseg.data imports torch

    print_data_warnings()
    try:
        apply_thread_policy()
        with _report_loads():
            return COMMANDS[args.command](args)
    except _user_errors() as err:
        if os.environ.get("SPARSEG_DEBUG"):
            raise
        sys.stderr.write(f"error: {describe(err)}\n")  # one write: torchrun's ranks share the stream
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
