"""Targets of the masked prediction: each frame's nearest k-means centroid of a feature of the clean audio.

Iteration 1 clusters MFCC + deltas (``MfccTargets``); iteration 2 clusters a layer of a frozen
iteration-1 model (``LayerTargets``), as in HuBERT (Hsu et al., 2021). ``make_targets`` fits the centroids
on frames of random training clips with the mini-batch k-means (``tokenlm.codecs.kmeans``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenlm.corpus.manifest import AudioClip
from tokenlm.errors import TokenlmError

from ..kmeans import kmeans, nearest
from .model import KMEANS_BATCH, LogMel, SemanticConfig, SemanticTokenizer, mfcc_features

if TYPE_CHECKING:
    from .train import SemanticTrainConfig

log = logging.getLogger("tokenlm.semantic")


class MfccTargets:
    """Iteration 1: frame targets = nearest of ``centroids`` to MFCC + deltas (CMVN)."""

    def __init__(self, model_cfg: SemanticConfig, centroids: torch.Tensor):
        self.logmel = LogMel(model_cfg)
        self.centroids = centroids

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        return mfcc_features(self.logmel(wav))

    def to(self, device) -> MfccTargets:
        self.logmel, self.centroids = self.logmel.to(device), self.centroids.to(device)
        return self

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        f = self.features(wav)
        return nearest(f.flatten(0, 1), self.centroids).view(f.shape[:2])


class LayerTargets:
    """Iteration 2: frame targets = nearest of ``centroids`` to layer ``layer`` of a frozen teacher."""

    def __init__(self, teacher: SemanticTokenizer, layer: int, centroids: torch.Tensor):
        self.teacher, self.layer, self.centroids = teacher.eval(), layer, centroids

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        return self.teacher.features(wav, self.layer)

    def to(self, device) -> LayerTargets:
        self.teacher, self.centroids = self.teacher.to(device), self.centroids.to(device)
        return self

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        f = self.features(wav)
        return nearest(f.flatten(0, 1), self.centroids).view(f.shape[:2])


@torch.no_grad()
def frame_features(feature_fn, clips: list[AudioClip], n_clips: int, seed: int = 0) -> torch.Tensor:
    """Stack ``feature_fn(wav [1, N]) -> [1, T, D]`` over a random subset of clips -> ``[frames, D]``."""
    idx = np.random.default_rng(seed).permutation(len(clips))[:n_clips]
    return torch.cat([feature_fn(torch.from_numpy(clips[i].samples)[None])[0] for i in idx])


def make_targets(cfg: SemanticTrainConfig, clips: list[AudioClip], teacher: SemanticTokenizer | None):
    k = cfg.model.n_targets
    if cfg.iteration == 1:
        t = MfccTargets(cfg.model, torch.zeros(0))
    else:
        if teacher is None:
            raise TokenlmError("iteration 2 needs --init: the iteration-1 model whose layer gives the targets")
        if teacher.cfg.unit_norm != cfg.model.unit_norm:  # targets live in the space the student's units will
            teacher.cfg = replace(teacher.cfg, unit_norm=cfg.model.unit_norm)
        t = LayerTargets(teacher, cfg.target_layer or teacher.cfg.unit_layer, torch.zeros(0))
    feats = frame_features(t.features, clips, cfg.kmeans_clips)
    log.info("fitting %d target clusters on %d frames (iteration %d)", k, len(feats), cfg.iteration)
    t.centroids = kmeans(feats, k, iters=cfg.kmeans_iters, batch_size=KMEANS_BATCH)
    return t
