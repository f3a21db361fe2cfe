"""Differential privacy for one user's supervised steps: DP-SGD with Opacus.

With ``dp = true`` every step on a user's private training split is a DP-SGD step:
Poisson-sampled minibatches (each training example in with probability q = batch-size / n),
per-example gradients clipped to ``dp-max-grad-norm`` and Gaussian noise added
(Opacus' ``GradSampleModule`` and ``DPOptimizer``), and an RDP accountant that counts
every such step. The noise multiplier is set once, from ``dp-epsilon``, ``dp-delta`` and
the most private steps the run can take, so that the planned run ends at (at most) the
target; a user whose next round would exceed it stops contributing.

What the guarantee covers: the examples of the user's *training* split, at the level of
one example (add or remove one). Everything the user releases afterwards (Z on public
data, its metrics, its model state) is post-processing of DP-trained weights with respect
to that split. Not covered: the validation split (the gates read it without noise) and
the test split (the reported metrics are computed on it).

What DP changes in the model, in DP runs (for the local baseline too): see
:func:`make_private_model` (BatchNorm, position embeddings, out-of-place activations).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PrivacyBudgetSpent",
    "PrivacySettings",
    "PrivateSteps",
    "make_private_model",
    "task_parameters",
]


class PrivacyBudgetSpent(RuntimeError):
    """A user's next round would take it past its target epsilon."""


@dataclass(frozen=True)
class PrivacySettings:
    """The run-config's ``dp-*`` keys."""

    epsilon: float = 8.0  # target; math.inf: clipping without noise (no guarantee)
    delta: float = 1e-5
    max_grad_norm: float = 1.0


def make_private_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that DP-SGD can train example by example.

    - A trainable BatchNorm becomes ``GroupNorm(1, C)`` with the same affine weights (batch
      statistics mix examples; one group keeps every channel's values together, so a 1 x 1
      feature map is not normalised to zero); a frozen one keeps its running statistics
      for good (eval mode), which treats every example alone.
    - Position embeddings, and parameters held directly by a container module (a ViT's
      ``pos_embed`` and ``cls_token``), stay as built or pretrained: they have no
      per-example gradient (looked up once per batch, or outside any hooked layer).
    - Activations run out of place, and hooked layers hand out a copy of their output:
      per-example gradient hooks forbid changing their outputs in place (timm's residual
      ``x += shortcut``).
    """
    fixed = copy.deepcopy(model)
    for name, module in list(fixed.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if any(p.requires_grad for p in module.parameters()):
                _replace(fixed, name, _group_norm(module))
            else:
                _replace(fixed, name, _FrozenStatistics(module))
    for name, module in fixed.named_modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
        if isinstance(module, nn.Embedding) and "position" in name.rsplit(".", 1)[-1]:
            module.requires_grad_(False)
        if any(True for _ in module.children()):
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
    hooked = [
        name
        for name, module in fixed.named_modules()
        if name and any(p.requires_grad for p in module.parameters(recurse=False))
    ]
    for name in hooked:
        _replace(fixed, name, _OutOfPlace(fixed.get_submodule(name)))
    return fixed


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _group_norm(norm: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    group = nn.GroupNorm(1, norm.num_features, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        with torch.no_grad():
            group.weight.copy_(norm.weight)
            group.bias.copy_(norm.bias)
    return group.to(next(norm.parameters()).device)


class _FrozenStatistics(nn.Module):
    """A frozen BatchNorm that always normalises with its running statistics."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.eval()

    def train(self, mode: bool = True) -> _FrozenStatistics:
        super().train(mode)
        self.norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class _OutOfPlace(nn.Module):
    """``inner`` on contiguous inputs, handing out a copy of its output.

    Other attributes are ``inner``'s (``.weight`` and the like, which callers read).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Contiguous inputs: Opacus 1.6's hook sampler for convolutions computes wrong
        # per-example gradients from a permuted input (functorch, used here, does not).
        args = tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)
        out = self.inner(*args, **kwargs)
        return out.clone() if isinstance(out, Tensor) else out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


class PrivateSteps:
    """DP-SGD for the supervised steps of one user (see the module docstring).

    Parameters
    ----------
    model
        The user's (fixed, :func:`make_private_model`) model; hooks are attached to it.
    task_parameters
        The parameters the task loss reaches (the DP optimiser's); others (the projection
        to Z) are trained by the contrastive objective only.
    optimizer
        The optimiser of ``task_parameters``; wrapped in Opacus' ``DPOptimizer``.
    num_examples, batch_size
        n and the expected batch size: q = batch_size / n.
    max_steps
        The most private steps the run can take (rounds x local steps x branches).
    settings
        Target epsilon, delta, clipping norm.
    generator
        Seeded generator of the Poisson sampling (the caller's batch order).
    noise_seed
        Seed of the noise's own generator. It is saved with the state but never rewound
        with the batch order: the paired gate replays a round's minibatches in its two
        branches, and the same noise in both would release their difference noiselessly.
    """

    def __init__(
        self,
        model: nn.Module,
        task_parameters: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        num_examples: int,
        batch_size: int,
        max_steps: int,
        settings: PrivacySettings,
        generator: torch.Generator,
        noise_seed: int = 0,
    ) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if num_examples < 1:
            raise ValueError("DP training needs at least one training example")
        self.settings = settings
        self.sample_rate = min(1.0, batch_size / num_examples)
        self.num_examples = num_examples
        self.expected_batch_size = max(1, round(self.sample_rate * num_examples))
        self.generator = generator
        if math.isinf(settings.epsilon):
            self.noise_multiplier = 0.0
        else:
            self.noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=settings.epsilon,
                    target_delta=settings.delta,
                    sample_rate=self.sample_rate,
                    steps=max(1, max_steps),
                    accountant="rdp",
                )
            )
        # functorch (vmap) for every layer: Opacus 1.6's hand-written convolution sampler
        # gives wrong per-example gradients for permuted inputs and for some depthwise
        # convolutions (caught by tests/test_models_contract.py); functorch is exact, at
        # up to twice the cost. strict=False: the remaining buffers are position ids and
        # frozen BatchNorm statistics in eval mode, which mix no examples.
        self.module = GradSampleModule(
            model, batch_first=True, loss_reduction="mean", strict=False, force_functorch=True
        )
        device = next(model.parameters()).device
        self.noise_generator = torch.Generator(device=device).manual_seed(noise_seed)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            generator=self.noise_generator,
        )
        self.task_parameters = task_parameters
        self.accountant = RDPAccountant()

    # ------------------------------------------------------------------ steps

    def minibatches(self, steps: int) -> Iterator[list[int]]:
        """Poisson-sampled index lists, one per step (an empty one is skipped by the caller)."""
        for _ in range(steps):
            keep = torch.rand(self.num_examples, generator=self.generator) < self.sample_rate
            yield keep.nonzero().flatten().tolist()

    def step(self, loss: Tensor) -> None:
        """One DP-SGD step on ``loss`` (mean over the sampled batch), and its accounting."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def skip(self) -> None:
        """Account for a step whose Poisson sample was empty (conservative: it counts)."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def no_per_example_gradients(self) -> Any:
        """Context without per-example gradient hooks (contrastive steps on public data)."""
        return _hooks_disabled(self.module)

    # ------------------------------------------------------------------ budget

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon spent so far at ``delta``, or after ``extra_steps`` more steps."""
        if self.noise_multiplier == 0:
            return math.inf if (self.accountant.history or extra_steps) else 0.0
        history = list(self.accountant.history)
        if extra_steps:
            history.append((self.noise_multiplier, self.sample_rate, extra_steps))
        if not history:
            return 0.0
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

        orders = self.accountant.DEFAULT_ALPHAS
        rdp = sum(
            compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
            for sigma, q, steps in history
        )
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=self.settings.delta)
        return float(eps)

    def check_budget(self, steps: int) -> None:
        """Raise :class:`PrivacyBudgetSpent` if ``steps`` more would pass the target."""
        if math.isinf(self.settings.epsilon):
            return
        after = self.epsilon(steps)
        if after > self.settings.epsilon * (1 + 1e-6):
            raise PrivacyBudgetSpent(
                f"privacy budget spent: {steps} more DP steps would take epsilon from "
                f"{self.epsilon():.3f} to {after:.3f}, past dp-epsilon={self.settings.epsilon} "
                f"(delta={self.settings.delta}); this user stops contributing"
            )

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the noise generator's state.

        The DP optimiser's own state is the wrapped optimiser's, saved by the trainer.
        """
        return {
            "history": [list(h) for h in self.accountant.history],
            "noise": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.accountant.history = [
            (float(s), float(q), int(n)) for s, q, n in state.get("history", [])
        ]
        if state.get("noise") is not None:
            self.noise_generator.set_state(state["noise"])


class _hooks_disabled:
    def __init__(self, module: Any) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.disable_hooks()

    def __exit__(self, *exc: object) -> None:
        self.module.enable_hooks()


def task_parameters(model: nn.Module, probe: Callable[[], Tensor]) -> list[nn.Parameter]:
    """The trainable parameters that ``probe()`` (a task loss) reaches, in model order."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(probe(), trainable, allow_unused=True)
    return [p for p, g in zip(trainable, grads, strict=True) if g is not None]
