import pytest
import torch
from quantpipe import tasks
from quantpipe.tasks.cifar10.data import load_splits, normalize
from quantpipe.tasks.classification.images import augment


def calibration_images(root, val_size, count, seed):
    return tasks.load("cifar10").calibration_inputs(
        root, {"val_size": val_size, "seed": seed}, count
    )


def test_splits_are_fixed_disjoint_and_complete(cifar_dir):
    splits = load_splits(str(cifar_dir), val_size=5000)
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [45000, 5000, 10000]
    again = load_splits(str(cifar_dir), val_size=5000)
    assert torch.equal(splits["val"][0], again["val"][0])
    train_rows = {bytes(row) for row in splits["train"][0][:2000].flatten(1).numpy()}
    assert not train_rows & {bytes(row) for row in splits["val"][0].flatten(1).numpy()}
    assert splits["test"][1][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


@pytest.mark.slow
def test_calibration_comes_from_the_training_split(cifar_dir):
    splits = load_splits(str(cifar_dir), val_size=5000)
    images = calibration_images(str(cifar_dir), 5000, 16, seed=0)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    train = normalize(splits["train"][0])
    for image in images[:4]:
        assert (train - image).abs().flatten(1).max(1).values.min() == 0


def test_calibration_size_larger_than_training_split_is_refused(cifar_dir):
    with pytest.raises(ValueError, match="calibration size 45001 .* 45000"):
        calibration_images(str(cifar_dir), 5000, 45001, seed=0)


def test_augment_crops_and_flips_deterministically():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32) % 251
    images = images.to(torch.uint8)
    first = augment(images, torch.Generator().manual_seed(1))
    second = augment(images, torch.Generator().manual_seed(1))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, second)
    unpadded = augment(images, torch.Generator().manual_seed(1), padding=0)
    for original, out in zip(images, unpadded, strict=True):
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
