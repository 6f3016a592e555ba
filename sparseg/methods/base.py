"""The method interface: how one training step turns a batch into losses."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sparseg.config import EvalConfig
from sparseg.eval import EvalResult, evaluate


class MethodConfig(BaseModel):
    """Base of every method's own config section (`method:` in the YAML)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Step:
    """Where the run is: passed to every method call."""

    iteration: int  # global, 0-based
    epoch: int  # 0-based
    iters_per_epoch: int
    total_iters: int

    @property
    def total_epochs(self) -> int:
        return -(-self.total_iters // self.iters_per_epoch)


@dataclass(frozen=True)
class EvalRequest:
    """What the trainer's evaluation of one model on the val list may use."""

    cfg: EvalConfig
    device: torch.device
    indices: list[int]  # this process's share of the first ``max_images`` images
    max_images: int
    class_names: tuple[str, ...] | list[str] | None = None
    seed: int = 0


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run besides its config."""

    num_classes: int
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    class_prior: torch.Tensor | None = None  # pixel count of each class in the labeled list (wants_class_prior)


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """L = Σ_n w_n · L_n over the named unweighted terms, in their order; a term without a weight weighs 1."""
    return sum(weights.get(name, 1.0) * value for name, value in terms.items())


def step_generator(seed: int, iteration: int, purpose: str, index: int = 0) -> torch.Generator:
    """A CPU generator for one (seed, iteration, purpose, index): per-step randomness without hidden state."""
    words = [seed, iteration, zlib.crc32(purpose.encode()), index]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)



class Method(nn.Module):
    """A training method. Subclasses set ``Config`` and ``streams`` and implement ``loss_terms`` (and
    ``loss_weights`` when a term weighs other than 1); ``forward`` forms the total from both.

    The method owns the student (``self.model``) and any extra state (teacher, memory banks);
    ``state_dict()`` therefore holds everything needed to resume.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    streams: ClassVar[tuple[str, ...]] = ("labeled",)
    label_kind: ClassVar[str | None] = None  # set by methods that train from sparse labels (points, ...)
    pretraining: ClassVar[bool] = False  # self-supervised pretraining (`sparseg pretrain`), no class labels
    score_name: ClassVar[str] = "val"  # what ``evaluate`` measures, in the log: "val mIoU", "probe mIoU"
    unused_parameters: ClassVar[bool] = False  # some model parameters get no gradient (DDP must be told)
    demo_overrides: ClassVar[dict[str, Any]] = {}  # `sparseg demo`: config keys (and `iters`) on its recipe
    # ``method:`` keys of a run that starts from a trained model (``sparseg demo --from-supervised``)
    trained_start_overrides: ClassVar[dict[str, Any]] = {}

    @classmethod
    def wants_class_prior(cls, cfg: MethodConfig) -> bool:
        """Whether the run must count the labeled list's pixels per class into ``MethodContext.class_prior``."""
        return False

    def __init__(self, model: nn.Module, cfg: MethodConfig, context: MethodContext) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.context = context

    @property
    def num_classes(self) -> int:
        return self.context.num_classes

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The model's optimizer groups; the method's own parameters outside the model (a pretraining head, a
        teacher: the optimizer drops those without ``requires_grad``) join ``head``."""
        groups = self.model.param_groups()
        in_model = {id(p) for p in self.model.parameters()}
        return {**groups, "head": groups["head"] + [p for p in self.parameters() if id(p) not in in_model]}

    def forward(self, batch: dict[str, dict[str, torch.Tensor]], step: Step) -> dict[str, torch.Tensor]:
        """``{"loss": total_loss(terms, weights), **terms}``: the total is back-propagated, the terms logged."""
        terms = self.loss_terms(batch, step)
        return {"loss": total_loss(terms, self.loss_weights()), **terms}

    def loss_terms(self, batch: dict[str, dict[str, torch.Tensor]], step: Step) -> dict[str, torch.Tensor]:
        """The step's named loss terms, unweighted, each a 0-dim tensor in the graph."""
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        """Weight of each term in the total (a term not listed weighs 1)."""
        return {}

    def after_optimizer_step(self, step: Step) -> None:
        """Update state that must not see the current step's loss (EMA teacher, memory banks)."""

    def eval_models(self) -> dict[str, nn.Module]:
        """Models to evaluate, primary first."""
        return {"student": self.model}

    def extra_logs(self) -> dict[str, Any]:
        """Scalars worth logging besides the losses (e.g. thresholds, memory fill)."""
        return {}

    def evaluate(self, model: nn.Module, dataset, request: EvalRequest) -> EvalResult:
        """The trainer's score of ``model`` (one of ``eval_models``): segmentation mIoU on this process's share."""
        return evaluate(model, dataset, request.cfg, self.num_classes, request.device, indices=request.indices,
                        class_names=request.class_names)

    def checkpoint_files(self, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Files the trainer writes beside ``last.pt`` at every checkpoint (name -> content), from its ``state``."""
        return {}
