"""The acquisition interface: ``Strategy.select(context, budget) -> pool indices``.

The context gives lazy, cached access to what strategies need (the pool, the EMA model, pool
probabilities and embeddings computed once in batches across ranks, the online scores), so a
strategy that needs none of it (Random, ASSL) costs no inference pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from al_lightning.data.pool import ActivePool
from al_lightning.methods.inference import BOTH, OUTPUTS, PoolOutput, pool_inference
from al_lightning.models import Backbone
from al_lightning.pretrain.outputs import load_pool_features
from al_lightning.registry import Registry
from al_lightning.scoring.online import OnlineScoreState


#: rows per block of the row-wise computations on (n, C) tensors: bounded temporaries at any n
ROW_CHUNK = 65_536


def softmax_rows_(logits: torch.Tensor, chunk: int = ROW_CHUNK) -> torch.Tensor:
    """Softmax over the last dimension in place, ``chunk`` rows at a time: the probabilities of a
    million-sample, thousand-class pool take the logits' memory instead of twice it."""
    for block in logits.split(chunk):
        block.copy_(torch.softmax(block, dim=-1))
    return logits


class RandomNetworkError(RuntimeError):
    """A strategy asked for features that would come from an untrained, randomly initialised network."""


#: the ``features`` choices of the strategies that read features; any other string is the run
#: directory of an ``al-lightning pretrain`` run whose ``features.pt`` to select on (USL's setting:
#: features of one self-supervised model, a fit that starts from scratch)
FeatureKind = Literal["auto", "pretrained", "embedding", "pixels"] | str


def run_features(run_dir: str, pool_size: int) -> torch.Tensor:
    """The cached features of a pre-training run, checked to be one row per pool id in order."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"strategy features: {run_dir} is neither auto/pretrained/embedding/pixels nor the "
                                "run directory of an 'al-lightning pretrain' run")
    return load_pool_features(run_dir, "strategy features", pool_size)


class AcquisitionContext:
    """What a strategy may look at when it picks. Unlabeled arrays are aligned with ``unlabeled``,
    labeled ones with ``labeled``; a strategy may read the labels of labeled samples, never others."""

    def __init__(self, pool: ActivePool, model: Backbone, loader_for: Callable, device: torch.device,
                 scores: OnlineScoreState | None = None, cycle: int = 0, seed: int = 0,
                 pretrained_features: torch.Tensor | None = None, model_is_random: bool = False) -> None:
        self.pool, self.model, self.loader_for, self.device = pool, model, loader_for, device
        self._scores, self.cycle, self.seed = scores, cycle, seed
        #: a pre-training run's features of every pool id (row i = id i), or None
        self.pretrained = pretrained_features
        #: True before the first fit of a model without pre-trained weights: its embedding is noise
        self.model_is_random = model_is_random
        #: the model outputs the strategy reads (``Strategy.select`` sets its own), computed in one pass
        self.model_outputs: tuple[PoolOutput, ...] = BOTH
        self._outputs: dict[tuple[str, str], torch.Tensor] = {}

    @cached_property
    def unlabeled(self) -> np.ndarray:
        return self.pool.unlabeled_indices

    @cached_property
    def labeled(self) -> np.ndarray:
        return self.pool.labeled_indices

    @cached_property
    def labeled_labels(self) -> np.ndarray:
        return self.pool.labels_of(self.labeled)

    def output(self, name: PoolOutput, labeled: bool = False) -> torch.Tensor:
        """One model output of the unlabeled (or labeled) ids, rows aligned with ``unlabeled`` (or
        ``labeled``), computed once: ``embeddings``, ``logits`` or one of the probabilities'
        per-sample statistics (``entropy``, ``max_probability``, ``margin``, ``predicted_class``).
        A pass over the unlabeled ids also computes the other outputs in ``model_outputs`` not held
        yet and keeps nothing else; one over the labeled ids (a budget's size, not the pool's) only
        the output asked for."""
        ids_of = "labeled" if labeled else "unlabeled"
        if (ids_of, name) not in self._outputs:
            self._check_trained()
            wanted = [name] if labeled else self._pass_outputs(name)
            ids = self.labeled if labeled else self.unlabeled
            computed = pool_inference(self.model, self.loader_for, ids, self.device, outputs=wanted)
            self._outputs.update({(ids_of, output): computed[output] for output in wanted})
        return self._outputs[(ids_of, name)]

    def _pass_outputs(self, name: PoolOutput) -> list[PoolOutput]:
        """What a pass over the unlabeled ids computes to give ``name``: it and the other
        ``model_outputs`` not held yet."""
        return [output for output in OUTPUTS if output == name or (
            output in self.model_outputs and ("unlabeled", output) not in self._outputs)]

    def _check_trained(self) -> None:
        if self.model_is_random:
            raise RandomNetworkError("this strategy needs the model's embedding or predictions, but no model "
                                     "is trained yet and none is pre-trained: run 'al-lightning pretrain' and "
                                     "set model.init_args.pretrained, or choose the strategy's features: pixels")

    @property
    def embeddings(self) -> torch.Tensor:
        """EMA-model features of the unlabeled samples, ``(n_unlabeled, d)``."""
        return self.output("embeddings")

    @cached_property
    def probs(self) -> torch.Tensor:
        """EMA-model class probabilities of the unlabeled samples, ``(n_unlabeled, C)`` float32,
        computed in place over the inference's logits (which are not kept)."""
        return softmax_rows_(self.output("logits"))

    @property
    def labeled_embeddings(self) -> torch.Tensor:
        return self.output("embeddings", labeled=True)

    @cached_property
    def labeled_probs(self) -> torch.Tensor:
        return softmax_rows_(self.output("logits", labeled=True))

    def release(self, output: PoolOutput, labeled: bool = False) -> None:
        """Drop a computed output (for ``logits``, the probabilities made of them) that the strategy
        reads no more, so what it computes next has the memory; a later read makes another pass."""
        self._outputs.pop(("labeled" if labeled else "unlabeled", output), None)
        if output == "logits":
            self.__dict__.pop("labeled_probs" if labeled else "probs", None)

    @property
    def num_classes(self) -> int:
        return self.pool.num_classes

    @property
    def classifier(self) -> torch.nn.Module:
        """The EMA model's classifier head: embeddings -> logits (differentiable)."""
        return self.model.head()

    def pixels(self, ids: np.ndarray) -> torch.Tensor:
        """Flattened, normalised, un-augmented images of ``ids``: features that need no model."""
        rows = [batch["plain"].flatten(1) for batch in self.loader_for(np.asarray(ids))]
        return torch.cat(rows).float() if rows else torch.empty(0)

    def features(self, kind: str, labeled: bool = False) -> torch.Tensor:
        """Features of the unlabeled (or labeled) samples: ``pretrained`` (the pre-training run's
        cached features), ``embedding`` (the EMA model), ``pixels``, ``auto``: pre-trained
        features when there are any, else the model's embedding (an error on a random network), or
        the directory of a pre-training run (its cached features, whatever the model's weights)."""
        kind = self._resolve(kind)
        if kind == "embedding":
            return self.labeled_embeddings if labeled else self.embeddings
        return self._stored_features(kind, self.labeled if labeled else self.unlabeled)

    def owned_features(self, kind: str) -> torch.Tensor:
        """:meth:`features` of the unlabeled samples for the caller to overwrite (normalise, weight)
        in place: the context drops its embeddings, so a pool's features are held once."""
        features = self.features(kind)
        self.release("embeddings")
        return features

    def stacked_features(self, kind: str) -> tuple[torch.Tensor, int]:
        """``(features, n_labeled)``: the labeled samples' features, then the unlabeled ones', in
        one tensor the caller owns and may overwrite, for strategies that cluster or search both
        together (TypiClust, BudgetAware, ProbCover, jLP). The embeddings come from one pass over
        both id sets, written into that one tensor, and the context keeps none of them (it keeps
        the pass's other ``model_outputs``): the pool's features are held once, not as two parts
        and their stack."""
        kind = self._resolve(kind)
        n_labeled = len(self.labeled)
        ids = np.concatenate([self.labeled, self.unlabeled])
        if kind != "embedding":
            return self._stored_features(kind, ids), n_labeled
        if ("unlabeled", "embeddings") in self._outputs:  # read before: stack what is held
            stacked = torch.cat([self.output("embeddings", labeled=True), self._outputs[("unlabeled", "embeddings")]])
        else:
            self._check_trained()
            computed = pool_inference(self.model, self.loader_for, ids, self.device,
                                      outputs=self._pass_outputs("embeddings"))
            stacked = computed.pop("embeddings")
            for output, rows in computed.items():
                self._outputs[("unlabeled", output)] = rows[n_labeled:]
                self._outputs.setdefault(("labeled", output), rows[:n_labeled])
        self.release("embeddings")
        self.release("embeddings", labeled=True)
        return stacked, n_labeled

    def _resolve(self, kind: str) -> str:
        """``auto`` made concrete: pre-trained features when there are any, else the embedding."""
        if kind == "auto":
            return "pretrained" if self.pretrained is not None else "embedding"
        return kind

    def _stored_features(self, kind: str, ids: np.ndarray) -> torch.Tensor:
        """Features that need no pass of the model: pre-trained, a pre-training run's, pixels."""
        if kind == "pixels":
            return self.pixels(ids)
        if kind != "pretrained":
            return run_features(kind, self.pool.size)[torch.as_tensor(ids, dtype=torch.int64)].float()
        if self.pretrained is None:
            raise RandomNetworkError("features: pretrained needs a pre-training run: run 'al-lightning pretrain' "
                                     "and set model.init_args.pretrained to its run directory")
        return self.pretrained[torch.as_tensor(ids, dtype=torch.int64)].float()

    @property
    def scores(self) -> OnlineScoreState:
        if self._scores is None:
            raise RuntimeError("this strategy needs online scores: add al_lightning.scoring.OnlineScoring "
                               "to trainer.callbacks in the config")
        return self._scores

    def rng(self) -> np.random.Generator:
        """A generator seeded by (seed, cycle): the same draw on every rank and every rerun."""
        return np.random.default_rng([self.seed, self.cycle])


class Strategy:
    """Picks ``budget`` distinct unlabeled pool ids; subclasses implement :meth:`rank_select`."""

    #: reads ``context.scores``: the loop refuses to start without the OnlineScoring callback
    needs_online_scores: bool = False
    #: the model outputs ``rank_select`` reads (``embeddings``; ``logits`` for the probabilities; a
    #: per-sample statistic of them such as ``entropy``): one pass over the pool computes them
    #: together and keeps no other (at a million samples and a thousand classes the logits alone are
    #: 3.7 GiB, an entropy 8 MB). Reading one not listed costs another pass.
    model_outputs: tuple[PoolOutput, ...] = BOTH

    def select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        context.model_outputs = self.model_outputs
        available = len(context.unlabeled)
        if budget > available:
            warnings.warn(f"budget {budget} exceeds the {available} unlabeled samples; taking all of them")
            budget = available
        if budget <= 0:
            return np.empty(0, dtype=np.int64)
        chosen = np.asarray(self.rank_select(context, budget), dtype=np.int64)
        if len(chosen) != budget or len(np.unique(chosen)) != budget:
            raise RuntimeError(f"{type(self).__name__} returned {len(chosen)} picks "
                               f"({len(np.unique(chosen))} distinct) for a budget of {budget}")
        return chosen

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        raise NotImplementedError

    def acquisition_note(self) -> str | None:
        """A few words on how the last selection chose (the cycle's console line shows them)."""
        return None

    def pseudo_labels(self, context: AcquisitionContext, picks: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, labels)`` of unlabeled samples to train on with pseudo-labels in the next fit
        only (CEAL); never oracle labels and never among ``picks``. None for most strategies."""
        return None


def top_k(context: AcquisitionContext, values: torch.Tensor, budget: int) -> np.ndarray:
    """Unlabeled pool ids of the ``budget`` largest ``values`` (aligned with ``context.unlabeled``);
    ties break towards the smaller pool id so every rank picks the same set."""
    values = values.detach().double().cpu().numpy()
    order = np.lexsort((context.unlabeled, -values))
    return context.unlabeled[order[:budget]]


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
register_strategy = STRATEGIES.register
