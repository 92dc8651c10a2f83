"""The ISBI 2012 challenge's scores of a membrane probability map against labelled slices.

Definitions follow the challenge's reference implementation (Fiji, Trainable Weka Segmentation,
`trainableSegmentation.metrics.RandError` and `VariationOfInformation`; Arganda-Carreras et al.,
Front. Neuroanat. 2015), with its N^2 normalisation:

- Each slice is scored in 2D. The ground-truth segments are the 4-connected components of the
  cells (membrane == 0); the proposal's segments are the 4-connected components of the pixels it
  calls cell (probability < threshold).
- Foreground restriction: only pixels inside ground-truth cells count (n of them). A cell pixel
  the proposal calls membrane belongs to no proposal segment and counts as a segment of its own.
- With c_ij the pixels shared by ground-truth segment i and proposal segment j, a_i and b_j the
  segment sizes and u the unassigned pixels: Rand true positives sum c_ij^2 + u, ground-truth
  pairs sum a_i^2, proposal pairs sum b_j^2 + u. V_rand_split = TP / (ground-truth pairs) (lowered
  by splits), V_rand_merge = TP / (proposal pairs) (lowered by mergers), V_rand = their harmonic
  mean. Slices are pooled: the pair counts are summed over slices before the ratios (as Fiji's
  stack statistics do), so larger slices weigh more.
- V_info_split = I(S;T) / H(S) and V_info_merge = I(S;T) / H(T) (S the proposal, T the ground
  truth, Shannon entropies of the restricted pixel distribution, unassigned pixels as singletons),
  V_info = their harmonic mean. Following Fiji, a side with zero entropy (one segment) scores 0,
  and V_info is computed per slice and then averaged over slices.

The challenge's final leaderboard also thins the proposal's boundaries to one pixel with a
watershed and reports the best score over thresholds; here the threshold is fixed (0.5 unless
given) and boundaries are scored as predicted, so INT8 and FP32 are compared on the same footing.
Pixel error is the fraction of all pixels where (probability >= threshold) != membrane.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pixel_error(
    membrane_probability: np.ndarray, membrane: np.ndarray, threshold: float = 0.5
) -> float:
    """The fraction of pixels where (probability >= threshold) != membrane (1 = membrane)."""
    predicted = np.asarray(membrane_probability) >= threshold
    return float(np.mean(predicted != np.asarray(membrane).astype(bool)))


def scores(membrane_probability: np.ndarray, membrane: np.ndarray, threshold: float = 0.5) -> dict:
    """Pixel error, V_rand and V_info (with their split and merge parts) of a (Z, Y, X) or (Y, X)
    membrane probability map against the ground-truth membrane mask (1 = membrane)."""
    probability = np.asarray(membrane_probability)
    truth = np.asarray(membrane)
    if probability.shape != truth.shape or probability.ndim not in (2, 3):
        raise ValueError(
            f"membrane_probability {probability.shape} and membrane {truth.shape} must be the "
            "same (Z, Y, X) or (Y, X) shape"
        )
    if probability.ndim == 2:
        probability, truth = probability[None], truth[None]
    predicted_membrane = probability >= threshold
    truth = truth.astype(bool)

    rand_counts = np.zeros(3)  # true positives, ground-truth pairs, proposal pairs
    info = []
    for z, (slice_prediction, slice_truth) in enumerate(
        zip(predicted_membrane, truth, strict=True)
    ):
        table = _Overlap(~slice_prediction, ~slice_truth)
        if table.pixels == 0:
            raise ValueError(
                f"slice {z} has no ground-truth cell pixels: the foreground-restricted scores "
                "are undefined there"
            )
        rand_counts += table.rand_pair_counts()
        info.append(table.information_split_merge())
    true_positives, truth_pairs, proposal_pairs = rand_counts
    rand_split = true_positives / truth_pairs
    rand_merge = true_positives / proposal_pairs
    info_split, info_merge = np.mean(info, axis=0)
    return {
        "pixel_error": pixel_error(probability, truth, threshold),
        "v_rand": _harmonic_mean(rand_split, rand_merge),
        "v_rand_split": float(rand_split),
        "v_rand_merge": float(rand_merge),
        "v_info": float(np.mean([_harmonic_mean(split, merge) for split, merge in info])),
        "v_info_split": float(info_split),
        "v_info_merge": float(info_merge),
        "threshold": threshold,
        "slices": len(truth),
    }


class _Overlap:
    """One slice's contingency table, restricted to ground-truth cell pixels and kept sparse (a
    noisy proposal can have tens of thousands of segments)."""

    def __init__(self, proposal_cells: np.ndarray, truth_cells: np.ndarray) -> None:
        truth_labels, _ = ndimage.label(truth_cells)  # 4-connected, as the challenge's
        proposal_labels, _ = ndimage.label(proposal_cells)
        inside = truth_labels > 0
        truth_of, proposal_of = truth_labels[inside], proposal_labels[inside]
        assigned = proposal_of > 0
        self.pixels = int(inside.sum())
        self.unassigned = int((~assigned).sum())  # cell pixels the proposal calls membrane
        self.truth_sizes = _nonzero_counts(truth_of)
        self.proposal_sizes = _nonzero_counts(proposal_of[assigned])
        pair_keys = truth_of[assigned].astype(np.int64) * (int(proposal_labels.max()) + 1)
        self.shared = _nonzero_counts(pair_keys + proposal_of[assigned])
        # An unassigned pixel is a proposal segment of its own, alone in its joint cell too.
        self.singletons = np.ones(self.unassigned)

    def rand_pair_counts(self) -> np.ndarray:
        """(true positives, ground-truth pairs, proposal pairs): ordered pixel pairs, self-pairs
        included (the N^2 normalisation)."""
        return np.array(
            [
                np.square(self.shared).sum() + self.unassigned,
                np.square(self.truth_sizes).sum(),
                np.square(self.proposal_sizes).sum() + self.unassigned,
            ]
        )

    def information_split_merge(self) -> tuple[float, float]:
        """(I/H(proposal), I/H(truth)), with Fiji's conventions for zero entropies."""
        truth_entropy = _entropy(self.truth_sizes, self.pixels)
        proposal_entropy = _entropy(
            np.concatenate([self.proposal_sizes, self.singletons]), self.pixels
        )
        joint_entropy = _entropy(np.concatenate([self.shared, self.singletons]), self.pixels)
        mutual_information = truth_entropy + proposal_entropy - joint_entropy
        if proposal_entropy == 0:
            return 0.0, 1.0
        if truth_entropy == 0:
            return 1.0, 0.0
        return mutual_information / proposal_entropy, mutual_information / truth_entropy


def _nonzero_counts(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_counts=True)[1].astype(np.float64)


def _entropy(counts: np.ndarray, total: int) -> float:
    probabilities = counts / total
    return float(-(probabilities * np.log(probabilities)).sum())


def _harmonic_mean(split: float, merge: float) -> float:
    return float(2 * split * merge / (split + merge)) if split + merge > 0 else 0.0
