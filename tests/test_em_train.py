"""EM training (task isbi2012_em) through the train stage: the record, and resume after a kill."""

import pytest
import torch
from quantpipe.models.build import load_trained
from quantpipe.quantize import EXAMPLE_BATCH
from quantpipe.stages.train import run
from quantpipe.tasks.isbi2012_em.data import prepare
from quantpipe.tasks.isbi2012_em.train import calibration_patches, patch_shape

CONFIG = {
    "task": "isbi2012_em", "model": "unet3d_aniso", "width": 2, "seed": 1, "sections": 3,
    "patch_size": 32, "epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "lr": 0.003,
    "weight_decay": 1e-4, "membrane_weight": 3.0, "device": "auto", "log_every": 1,
}  # fmt: skip


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def volume(tmp_path_factory, isbi_dir):
    path = tmp_path_factory.mktemp("em") / "isbi2012_em.zarr"
    prepare(str(isbi_dir), str(path), log=lambda _: None)
    return str(path)


def train(volume, out, log=lambda _: None):
    return run(volume, str(out / "model.pt"), str(out / "metrics.json"), CONFIG, log=log)


@pytest.mark.slow
def test_the_record_says_what_ran(volume, tmp_path):
    record = train(volume, tmp_path)
    if torch.cuda.is_available():
        assert record["device"] == "cuda" and record["device_reason"].startswith("CUDA device")
    else:
        assert record["device"] == "cpu" and "no CUDA" in record["device_reason"]
    assert record["architecture"] == {"name": "unet3d_aniso", "width": 2}
    assert len(record["history"]) == 2 and 0 <= record["val_pixel_error"] <= 1
    net, _ = load_trained(tmp_path / "model.pt")
    x = torch.rand(EXAMPLE_BATCH, 1, 3, 32, 32)
    assert net(x).shape == x.shape


def test_inference_tiles_take_their_own_depth_not_the_training_patches(volume):
    """unet3d_aniso trains on `sections`-deep patches and calibrates (and infers) on
    `tile_sections`-deep tiles: the network runs on any depth."""
    config = {**CONFIG, "tile": 64, "tile_sections": 5}
    assert patch_shape(config) == (3, 32, 32)
    patches = calibration_patches(volume, config, 2)
    assert patches.shape == (2, 1, 5, 64, 64) and patches.dtype == torch.float32


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_weights(volume, tmp_path):
    train(volume, tmp_path / "straight")

    def kill_in_epoch_2(line):
        if "epoch 2/" in line:
            raise Killed(line)

    with pytest.raises(Killed):
        train(volume, tmp_path / "resumed", log=kill_in_epoch_2)
    resumed = train(volume, tmp_path / "resumed")
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run_here"] == 1
    a, _ = load_trained(tmp_path / "straight" / "model.pt")
    b, _ = load_trained(tmp_path / "resumed" / "model.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
