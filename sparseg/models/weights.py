"""Encoder weight loading through explicit key maps (protocols.md §5).

Every check (layout, stem, missing keys, shapes) runs before anything is copied, so a failed load
leaves the encoder untouched; there is never a silent ``strict=False``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseg.serialization import safe_torch_load

LAYOUTS = ("auto", "deepstem", "torchvision", "timm", "mmseg", "sparseg")
PRETRAINED_FORMAT = "sparseg-pretrained"  # `sparseg pretrain` output: encoder + decoder of one model config
TRAINED_FORMAT = "sparseg-checkpoint"  # a `sparseg train` checkpoint (best.pt, last.pt): the whole trained model

# checkpoint containers, in order of preference (protocols.md §5: UniMatch, U2PL/DGCL, mmseg)
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_ema", "teacher_state", "ema", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
_MODEL_PREFIXES = ("backbone.", "encoder.")  # whole-model checkpoints: keep the backbone only
# mmseg ResNetV1c stem -> deep-stem names (protocols.md §5)
_MMSEG_STEM = {
    "0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"
}
_AVGPOOL_DOWNSAMPLE = re.compile(r"^layer\d+\.\d+\.downsample\.2\.")
_BLOCK = re.compile(r"^(layer\d+\.\d+)\.")
_LISTED = 10  # keys listed in an error message before "... and N more"


class WeightsError(ValueError):
    """Encoder weights cannot be loaded; the message says which file and what to change."""


@dataclass
class LoadReport:
    """What ``load_encoder_weights`` did."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # tolerated: num_batches_tracked only
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    dropped: list[str] = field(default_factory=list)  # classifier / non-backbone keys set aside
    container: str | None = None  # checkpoint entry that held the state dict, e.g. "model"
    rescaled: dict[str, float] = field(default_factory=dict)  # conv -> factor applied (model.pretrained_rescale)
    kept_heads: list[str] = field(default_factory=list)  # task heads left at their initialisation

    def __str__(self) -> str:
        parts = [f"layout {self.layout}", f"{len(self.loaded)} tensors loaded"]
        if self.container:
            parts.append(f"from '{self.container}'")
        if self.missing:
            parts.append(f"{len(self.missing)} num_batches_tracked kept at their current value")
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped ({_listing(self.dropped, 3)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({_listing(self.unexpected, 3)})")
        if self.kept_heads:
            parts.append(f"heads kept at their initialisation: {', '.join(self.kept_heads)}")
        if self.rescaled:
            factors = self.rescaled.values()
            parts.append(f"{len(self.rescaled)} convs rescaled to their initial norm (x{min(factors):.2f}"
                         f"-x{max(factors):.2f})")
        return ", ".join(parts)


def _listing(keys: list[str], limit: int = _LISTED) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _read(source: str | Path | Mapping[str, Any]) -> tuple[Any, str]:
    if isinstance(source, Mapping):
        return source, "the given state dict"
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"encoder weights file not found: {path}")
    try:
        why = "encoder weights need only tensors: re-save its state dict where you trust the file"
        return safe_torch_load(path, WeightsError, why), str(path)
    except WeightsError:
        raise
    except Exception as err:  # truncated, not a torch file, ...
        raise WeightsError(f"cannot read encoder weights file {path}: {err}") from err


def _holds_tensors(obj: Any, depth: int = 2) -> bool:
    if not isinstance(obj, Mapping):
        return False
    return any(isinstance(v, Tensor) for v in obj.values()) or (
        depth > 0 and any(_holds_tensors(v, depth - 1) for v in obj.values())
    )


def _unwrap(obj: Any, where: str) -> tuple[dict[str, Tensor], str | None]:
    """Find the state dict inside a checkpoint container; return it and the container path."""
    path: list[str] = []
    while True:
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{where}: expected a state dict, got {type(obj).__name__}")
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and len(tensors) == len(obj):
            break
        inner = next((k for k in _CONTAINER_KEYS if _holds_tensors(obj.get(k))), None)
        if inner is None:
            if tensors:
                break
            raise WeightsError(
                f"{where}: no tensors found; top-level keys: {_listing(list(map(str, obj)))}"
            )
        path.append(inner)
        obj = obj[inner]
    return tensors, ".".join(path) or None


def _strip_prefixes(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Remove wrapper prefixes; for whole-model checkpoints keep only the backbone keys."""

    def strip(key: str) -> str:
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key

    state = {strip(k): v for k, v in state.items()}
    for prefix in _MODEL_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return kept, [k for k in state if not k.startswith(prefix)]
    return state, []


def _file_stem(state: Mapping[str, Tensor], where: str) -> str:
    if "stem.0.weight" in state:
        return "mmseg"
    if "conv1.0.weight" in state:
        return "deep"
    if "conv1.weight" in state:
        return "plain"
    raise WeightsError(
        f"{where}: not a ResNet state dict (no conv1.weight, conv1.0.weight or stem.0.weight); "
        f"first keys: {_listing(list(state))}"
    )


def _resolve_layout(layout: str, file_stem: str, where: str) -> str:
    detected = {"mmseg": "mmseg", "deep": "deepstem", "plain": "torchvision"}[file_stem]
    if layout == "auto":
        return detected
    accepted = {
        "deepstem": ("deep",),
        "torchvision": ("plain",),
        "timm": ("deep", "plain"),  # timm plain resnets: torchvision names; `s` variants: deep stem
        "mmseg": ("mmseg",),
    }[layout]
    if file_stem not in accepted:
        raise WeightsError(
            f"{where} looks like the '{detected}' layout, not '{layout}': "
            f"set model.pretrained_layout to '{detected}' or 'auto'"
        )
    return layout


def _rename_mmseg_stem(state: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed = {}
    for key, value in state.items():
        parts = key.split(".", 2)
        if parts[0] == "stem" and len(parts) == 3 and parts[1] in _MMSEG_STEM:
            key = f"{_MMSEG_STEM[parts[1]]}.{parts[2]}"
        renamed[key] = value
    return renamed


def _stem_hint(state: Mapping[str, Tensor], model_state: Mapping[str, Tensor]) -> str:
    file_out = state["conv1.0.weight"].shape[0] if "conv1.0.weight" in state else None
    model_out = model_state["conv1.0.weight"].shape[0] if "conv1.0.weight" in model_state else None
    if file_out is not None and model_out is not None and file_out * 2 == model_out:
        return (
            f"; the file's deep stem is {file_out}-{file_out}-{2 * file_out} (timm resnetXXc, "
            "mmseg ResNetV1c with stem_channels=64); the model's is the "
            f"{model_out}-{model_out}-{2 * model_out} stem of resnet101.pth / timm resnetXXs."
        )
    return "; check model.encoder and model.width against the file"


def load_encoder_weights(
    encoder: nn.Module, source: str | Path | Mapping[str, Any], layout: str = "auto"
) -> LoadReport:
    """Load ResNet weights from a file or state dict into ``encoder``, after checking everything.

    ``layout``: ``auto`` | ``deepstem`` (community resnet101.pth, timm ``resnetXXs``) |
    ``torchvision`` | ``timm`` | ``mmseg`` (ResNetV1c). Raises ``WeightsError`` on an unreadable
    file, a stem that does not match ``encoder.stem``, an avg-pool downsample (``d`` variants),
    missing backbone keys, blocks the encoder lacks, or any shape mismatch.
    """
    if layout not in LAYOUTS:
        raise WeightsError(f"unknown weights layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    raw, where = _read(source)
    state, container = _unwrap(raw, where)
    state, dropped = _strip_prefixes(state)
    file_stem = _file_stem(state, where)
    layout = _resolve_layout(layout, file_stem, where)
    if layout == "mmseg":
        state = _rename_mmseg_stem(state)

    avgpool = sorted(k for k in state if _AVGPOOL_DOWNSAMPLE.match(k))
    if avgpool:
        raise WeightsError(
            f"{where} has avg-pool downsample blocks ({_listing(avgpool, 2)}): a timm resnetXXd / "
            "mmseg ResNetV1d checkpoint, which is not equivalent to this encoder's strided 1x1 "
            "downsample. Use resnet101.pth, a timm resnetXXs or a torchvision checkpoint."
        )
    model_stem = getattr(encoder, "stem", None)
    file_kind = "plain" if file_stem == "plain" else "deep"
    if model_stem is not None and model_stem != file_kind:
        described = {"deep": "a deep 3x3 stem", "plain": "a plain 7x7 stem"}
        raise WeightsError(
            f"{where} has {described[file_kind]} but the model has {described[model_stem]}: "
            f"set model.stem: {file_kind}"
        )

    dropped += [k for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model_state = encoder.state_dict()
    missing = [k for k in model_state if k not in state]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    absent = [k for k in missing if k not in tolerated]
    if absent:
        raise WeightsError(
            f"{where} lacks {len(absent)} encoder keys ({layout} layout): {_listing(absent)}"
        )
    unexpected = [k for k in state if k not in model_state]
    extra_blocks = list(dict.fromkeys(m.group(1) for k in unexpected if (m := _BLOCK.match(k))))
    if extra_blocks:
        raise WeightsError(
            f"{where} has {len(extra_blocks)} blocks the ResNet-{getattr(encoder, 'depth', '?')} "
            f"encoder lacks ({_listing(extra_blocks, 3)}): the file is for a deeper ResNet; "
            "set model.encoder to match it"
        )
    mismatched = [
        f"{k} {list(state[k].shape)} in the file vs {list(v.shape)} in the model"
        for k, v in model_state.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        raise WeightsError(
            f"{where}: {len(mismatched)} shape mismatches ({layout} layout): {_listing(mismatched, 2)}"
            + _stem_hint(state, model_state)
        )

    loadable = {k: state.get(k, model_state[k]) for k in model_state}
    encoder.load_state_dict(loadable, strict=True)
    return LoadReport(
        layout=layout,
        loaded=[k for k in model_state if k in state],
        missing=tolerated,
        unexpected=unexpected,
        dropped=dropped,
        container=container,
    )


# ----------------------------------------------------------------------------- sparseg pretrained files


def transferable_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights without its task heads (``model.task_heads``): what pretraining hands on."""
    heads = tuple(f"{name}." for name in getattr(model, "task_heads", ()))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(heads)}


def pretrained_file(model: nn.Module, config: dict[str, Any], iteration: int) -> dict[str, Any]:
    """Contents of ``OUT/pretrained.pt``: the transferable weights, the run's config and where it stopped."""
    return {
        "format": PRETRAINED_FORMAT,
        "pretraining": config["method"]["name"],
        "iteration": iteration,
        "model": config["model"],
        "config": config,
        "state_dict": transferable_state(model),
    }


def trained_model_state(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The model weights of a training checkpoint and where they came from: the teacher where the method has one
    (the model it reports and ``sparseg eval`` scores by default), else the student (``model``)."""
    method_state = checkpoint["method"]
    source = "teacher" if any(k.startswith("teacher.") for k in method_state) else "model"
    prefix = f"{source}."
    return {k[len(prefix):]: v for k, v in method_state.items() if k.startswith(prefix)}, source


def read_pretrained(path: str | Path) -> dict[str, Any] | None:
    """The contents of a ``sparseg pretrain`` file, or of a ``sparseg train`` checkpoint in the same shape
    (format ``sparseg-checkpoint``), or None when ``path`` holds another kind of weights.

    The tensors are memory-mapped, so looking into a large encoder file here costs no full read."""
    try:
        raw = safe_torch_load(path, WeightsError, mmap=True)
    except RuntimeError:  # not a zip-format file (mmap needs one): not ours; the encoder loader reads it
        return None
    if not isinstance(raw, Mapping):
        return None
    if raw.get("format") == PRETRAINED_FORMAT:
        return raw
    if isinstance(raw.get("method"), Mapping) and isinstance(raw.get("config"), Mapping) and "iteration" in raw:
        state, source = trained_model_state(raw)
        return {"format": TRAINED_FORMAT, "source": source, "iteration": raw["iteration"],
                "trained_with": raw["config"]["method"]["name"], "model": raw["config"]["model"],
                "config": raw["config"], "state_dict": state}
    return None


def conv_bn_pairs(model: nn.Module, size: int = 112) -> dict[str, str]:
    """``{conv name: BatchNorm name}`` for each Conv2d whose output is the input of a BatchNorm2d, found by
    one forward pass in evaluation mode (``size``: the side of the probe input)."""
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[int, str] = {}
    pairs: dict[str, str] = {}

    def record_conv(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        outputs[id(output)] = names[module]

    def match_bn(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if id(inputs[0]) in outputs:
            pairs[outputs[id(inputs[0])]] = names[module]

    handles = [m.register_forward_hook(record_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(match_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.rand(2, 3, size, size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return pairs


def _rescale_to_initial_norms(model: nn.Module, pairs: dict[str, str], initial: dict[str, Tensor]) -> dict[str, float]:
    """Scale each paired conv's weight by c = ||w_init|| / ||w|| and its BatchNorm's running mean by c and
    running variance by c²: the same function in training and evaluation mode, weights at the initial scale."""
    factors = {}
    with torch.no_grad():
        for conv_name, bn_name in pairs.items():
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            c = initial[conv_name] / conv.weight.norm()
            conv.weight.mul_(c)
            if conv.bias is not None:
                conv.bias.mul_(c)
            if bn.running_mean is not None:
                bn.running_mean.mul_(c)
                bn.running_var.mul_(c**2)
            factors[conv_name] = float(c)
    return factors


def _fit_hint(pretrained: Mapping[str, Any]) -> str:
    was = pretrained.get("model", {})
    verb = "trained" if pretrained.get("format") == TRAINED_FORMAT else "pretrained"
    return (f"; it was {verb} with model.name={was.get('name')}, encoder={was.get('encoder')}, "
            f"width={was.get('width')}, stem={was.get('stem')}, decoder_channels={was.get('decoder_channels')}")


def _check_fit(state: Mapping[str, Tensor], body: Mapping[str, Tensor], extra: list[str], where: str,
               contents: Mapping[str, Any]) -> None:
    """Refuse, before anything is copied, a file that lacks keys of ``body`` (encoder and decoder), holds the
    ``extra`` keys the model lacks, or differs in a shape; the message names them and the file's model config."""
    absent = [k for k in body if k not in state and not k.endswith("num_batches_tracked")]
    if absent or extra:
        parts = ([f"lacks {len(absent)} model keys ({_listing(absent, 3)})"] if absent else []) + (
            [f"has {len(extra)} keys the model lacks ({_listing(extra, 3)})"] if extra else [])
        raise WeightsError(f"{where} does not fit this model: it {' and '.join(parts)}{_fit_hint(contents)}")
    mismatched = [f"{k} {list(state[k].shape)} in the file vs {list(v.shape)} in the model"
                  for k, v in body.items() if k in state and state[k].shape != v.shape]
    if mismatched:
        raise WeightsError(f"{where} does not fit this model: {len(mismatched)} shape mismatches, "
                           f"{_listing(mismatched, 2)}{_fit_hint(contents)}")


def load_trained_model(model: nn.Module, trained: Mapping[str, Any], where: str) -> LoadReport:
    """Load a training checkpoint's model (``read_pretrained`` of a ``sparseg train`` file) into ``model``.

    Encoder and decoder must match key for key and shape for shape (else nothing is copied); task heads
    (classifier, aux, projection) are loaded where the file has them with the same shape and otherwise keep
    their initialisation (another class count, a head the file's model lacked). No rescaling: the weights were
    trained for a segmentation task, at the scale its optimiser left them.
    """
    state = trained["state_dict"]
    target = model.state_dict()
    heads = tuple(f"{name}." for name in getattr(model, "task_heads", ()))
    extra = [k for k in state if k not in target and not k.startswith(heads)]
    _check_fit(state, transferable_state(model), extra, where, trained)
    loaded = [k for k, v in target.items() if k in state and state[k].shape == v.shape]
    kept = sorted({k.split(".")[0] for k in target if k not in loaded and k.startswith(heads)})
    dropped = [k for k in state if k not in loaded and k.startswith(heads)]
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return LoadReport(layout=f"{TRAINED_FORMAT} ({trained['source']} of a '{trained['trained_with']}' run at "
                             f"iteration {trained['iteration']})", loaded=loaded, dropped=dropped, kept_heads=kept)


def load_pretrained_model(model: nn.Module, pretrained: Mapping[str, Any], where: str,
                          rescale: bool = True) -> LoadReport:
    """Load a ``sparseg pretrain`` file's encoder and decoder into ``model``; task heads keep their init.

    Every key must exist in the model with the same shape, else nothing is copied and the error names the
    first differing layers and the model keys the file was pretrained with. ``rescale``: bring each loaded
    conv that feeds a BatchNorm back to the norm it has in ``model`` now, at initialisation (BatchNorm makes
    the function independent of that norm, SGD's relative step is not: docs/methods/pretrain.md).
    """
    state = pretrained["state_dict"]
    target = transferable_state(model)
    _check_fit(state, target, [k for k in state if k not in target], where, pretrained)
    pairs = {conv: bn for conv, bn in conv_bn_pairs(model).items() if f"{conv}.weight" in state} if rescale else {}
    initial = {conv: model.get_submodule(conv).weight.detach().norm() for conv in pairs}
    model.load_state_dict({k: state[k] for k in target if k in state}, strict=False)
    return LoadReport(layout="sparseg", loaded=list(state), rescaled=_rescale_to_initial_norms(model, pairs, initial))
