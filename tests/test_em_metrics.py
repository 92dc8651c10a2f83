"""quantpipe.tasks.isbi2012_em.metrics: hand-computed cases on tiny slices, and a brute-force
cross-check of the
Rand and information scores by their definitions (pixel pairs, entropies) on random slices."""

import math

import numpy as np
import pytest
from quantpipe.tasks.isbi2012_em.metrics import scores
from scipy import ndimage
from scipy.stats import entropy

# One row: two 4-pixel cells split by a membrane pixel (1 = membrane).
TWO_CELLS = np.array([[0, 0, 0, 0, 1, 0, 0, 0, 0]], np.uint8)
# One row: three 2-pixel cells.
THREE_CELLS = np.array([[0, 0, 1, 0, 0, 1, 0, 0]], np.uint8)


def probability(membrane: np.ndarray) -> np.ndarray:
    return membrane.astype(np.float32)


def test_a_perfect_prediction_scores_one():
    result = scores(probability(TWO_CELLS), TWO_CELLS)
    assert result["pixel_error"] == 0
    assert result["v_rand"] == result["v_info"] == 1.0


def test_a_split_cell():
    # Membrane predicted inside the first cell: pieces of 2 and 1 pixels plus one cell pixel called
    # membrane (a singleton). Rand, pairs with self-pairs: TP = 2^2 + 1^2 + 4^2 + 1 = 22, truth
    # pairs 4^2 + 4^2 = 32, proposal pairs 22: split 22/32, merge 1, V_rand = 2*22/(32+22).
    # Information: H(T) = ln 2, H(S) = H(1/4, 1/8, 1/2, 1/8) = 1.75 ln 2, H(S,T) = H(S), so
    # I = ln 2, split = 1/1.75 = 4/7, merge = 1, V_info = 8/11.
    prediction = probability(TWO_CELLS)
    prediction[0, 2] = 0.9
    result = scores(prediction, TWO_CELLS)
    assert result["pixel_error"] == pytest.approx(1 / 9)
    assert result["v_rand_split"] == pytest.approx(22 / 32)
    assert result["v_rand_merge"] == pytest.approx(1.0)
    assert result["v_rand"] == pytest.approx(44 / 54)
    assert result["v_info_split"] == pytest.approx(4 / 7)
    assert result["v_info_merge"] == pytest.approx(1.0)
    assert result["v_info"] == pytest.approx(8 / 11)


def test_a_merge_of_two_cells():
    # The first membrane pixel is missed: cells 1 and 2 become one segment. Restricted to cell
    # pixels: TP = 3 * 2^2 = 12, truth pairs 12, proposal pairs 4^2 + 2^2 = 20: merge 0.6, split 1,
    # V_rand = 24/32. H(T) = ln 3, H(S) = H(2/3, 1/3) = I, so merge = H(S)/ln 3, split = 1.
    prediction = probability(THREE_CELLS)
    prediction[0, 2] = 0.1
    result = scores(prediction, THREE_CELLS)
    assert result["pixel_error"] == pytest.approx(1 / 8)
    assert result["v_rand_merge"] == pytest.approx(0.6)
    assert result["v_rand_split"] == pytest.approx(1.0)
    assert result["v_rand"] == pytest.approx(0.75)
    proposal_entropy = math.log(3) - 2 / 3 * math.log(2)
    assert result["v_info_merge"] == pytest.approx(proposal_entropy / math.log(3))
    assert result["v_info"] == pytest.approx(
        2 * proposal_entropy / (math.log(3) + proposal_entropy)
    )


def test_merging_everything_scores_zero_information():
    # One proposal segment carries no information (Fiji's convention: V_info 0).
    result = scores(np.zeros((1, 9), np.float32), TWO_CELLS)
    assert result["v_info"] == 0.0
    assert result["v_rand"] == pytest.approx(2 * 32 / (32 + 64))


def test_slices_pool_rand_counts_and_average_information():
    # A split slice (TP 22, truth 32, proposal 22) and a perfect one (32, 32, 32): V_rand pools the
    # counts, 2 * 54 / (64 + 54); V_info averages the per-slice scores, (8/11 + 1) / 2.
    split = probability(TWO_CELLS)
    split[0, 2] = 1.0
    stack = np.stack([split, probability(TWO_CELLS)])
    result = scores(stack, np.stack([TWO_CELLS, TWO_CELLS]))
    assert result["slices"] == 2
    assert result["v_rand"] == pytest.approx(108 / 118)
    assert result["v_info"] == pytest.approx((8 / 11 + 1) / 2)
    assert result["pixel_error"] == pytest.approx(1 / 18)


def test_the_threshold_decides_membrane_at_equality():
    prediction = np.full(TWO_CELLS.shape, 0.3, np.float32)
    prediction[0, 4] = 0.5
    assert scores(prediction, TWO_CELLS)["pixel_error"] == 0
    assert scores(prediction, TWO_CELLS, threshold=0.3)["pixel_error"] == pytest.approx(8 / 9)


def test_cells_touching_only_diagonally_are_separate():
    # 4-connectivity, as the challenge: a diagonal contact does not join two cells.
    membrane = np.array([[0, 1], [1, 0]], np.uint8)
    assert scores(probability(membrane), membrane)["v_rand"] == 1.0
    assert scores(np.zeros((2, 2), np.float32), membrane)["v_rand"] < 1.0


def brute_force(prediction_membrane: np.ndarray, membrane: np.ndarray) -> tuple[float, float]:
    """V_rand and V_info of one slice straight from the definitions: every ordered pair of cell
    pixels for Rand; entropies of segment-size distributions for information."""
    truth, _ = ndimage.label(membrane == 0)
    proposal, count = ndimage.label(~prediction_membrane)
    inside = truth > 0
    truth_of = truth[inside]
    proposal_of = proposal[inside].copy()
    unassigned = proposal_of == 0
    proposal_of[unassigned] = count + 1 + np.arange(unassigned.sum())  # each its own segment
    same_truth = truth_of[:, None] == truth_of[None, :]
    same_proposal = proposal_of[:, None] == proposal_of[None, :]
    true_positives = (same_truth & same_proposal).sum()
    v_rand = 2 * true_positives / (same_truth.sum() + same_proposal.sum())

    def h(labels):
        return entropy(np.unique(labels, return_counts=True)[1])

    joint = truth_of.astype(np.int64) * (proposal_of.max() + 1) + proposal_of
    mutual_information = h(truth_of) + h(proposal_of) - h(joint)
    v_info = 2 * mutual_information / (h(truth_of) + h(proposal_of))
    return v_rand, v_info


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_a_brute_force_count_on_random_slices(seed):
    rng = np.random.default_rng(seed)
    membrane = np.zeros((24, 24), np.uint8)
    membrane[rng.integers(0, 24, 3), :] = 1  # a few membrane lines make several cells
    membrane[:, rng.integers(0, 24, 3)] = 1
    prediction = np.clip(membrane + rng.normal(0, 0.35, membrane.shape), 0, 1).astype(np.float32)
    result = scores(prediction, membrane)
    v_rand, v_info = brute_force(prediction >= 0.5, membrane)
    assert result["v_rand"] == pytest.approx(v_rand)
    assert result["v_info"] == pytest.approx(v_info)
    assert 0 < result["v_rand"] < 1 and 0 < result["v_info"] < 1


def test_on_a_real_slice_noise_costs_more_than_a_one_pixel_shift(isbi_dir):
    from PIL import Image

    membrane = (np.asarray(Image.open(isbi_dir / "label" / "25.png")) == 0).astype(np.uint8)
    shifted = np.roll(membrane, 1, axis=1).astype(np.float32)
    noisy = np.clip(membrane + np.random.default_rng(0).normal(0, 0.4, membrane.shape), 0, 1)
    shifted_scores, noisy_scores = scores(shifted, membrane), scores(noisy, membrane)
    assert shifted_scores["v_rand"] > 0.9 and shifted_scores["v_info"] > 0.9
    assert noisy_scores["v_rand"] < shifted_scores["v_rand"]


@pytest.mark.parametrize(
    "prediction,truth,message",
    [(np.zeros((2, 3)), np.zeros((3, 2)), "same"), (np.zeros(4), np.zeros(4), "same"),
     (np.ones((1, 4)), np.ones((1, 4)), "no ground-truth cell pixels")],
)  # fmt: skip
def test_refuses_what_it_cannot_score(prediction, truth, message):
    with pytest.raises(ValueError, match=message):
        scores(prediction, truth)
