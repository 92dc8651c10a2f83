"""Accuracy control for task isbi2012_em: the validator scores a model on the validation sections
through the tiled volume path (so an INT8 graph exported for tiles can be scored), the
sensitivity stage ranks a U-Net's layers with it, the budgeted quantize stage keeps the layer
INT8 breaks in FP32, and the DAG carries the budgeted variants through to the segment stage.

The U-Net is trained briefly on the real stack, then one of its convolutions is made fragile as
in tests/test_accuracy_control.py: an input channel made dead (its batch norm and ReLU give 0)
and its weights on that channel 1000x the others, which leaves FP32's outputs as they are and
rounds the layer's real weights away in INT8's per-output-channel scales."""

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import REPO
from quantpipe import tasks
from quantpipe.configuration import check_consistency
from quantpipe.models.build import load_trained
from quantpipe.quantize import load_for_cpu
from quantpipe.stages import quantize, sensitivity, train
from quantpipe.tasks.isbi2012_em.data import SPLITS, prepare
from quantpipe.tasks.isbi2012_em.spec import SPEC
from workflowtools import copy_repository, planned_jobs, snakemake

TASK = tasks.load("isbi2012_em")
EM = {"sections": 1, "patch_size": 64, "epochs": 1, "steps_per_epoch": 100, "batch_size": 4,
      "lr": 0.01, "weight_decay": 1e-4, "membrane_weight": 1.0, "tile": 128, "overlap": 16,
      "tile_sections": 3, "section_overlap": 1, "block_tiles": 2, "inference_batch_size": 4,
      "threshold": 0.5}  # fmt: skip
FRAGILE = "down.1.second.conv"  # its input: down.1.first's convolution, batch norm and ReLU


def run_config(model: str, em: dict = EM, **stage) -> dict:
    """What the sensitivity and budgeted quantize jobs get (workflow/rules): the run, the quantize
    settings and the validator's, so a key the validator reads beyond them fails here."""
    config = {"em": em, "quantize": {"calibration_batch_size": 4}}
    return {"task": "isbi2012_em", "model": model, "width": 4, "seed": 0,
            **SPEC.stage_settings(config, "quantize"), **SPEC.stage_settings(config, "validation"),
            **stage}  # fmt: skip


def quiet(_line):
    pass


# --- the validator ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A volume shaped as prepare_data writes it, 30 sections of 40 x 40, whose image is its
    membrane mask x 255: a model of the pixel alone can predict it exactly."""
    membrane = (np.random.default_rng(0).random((30, 40, 40)) < 0.3).astype(np.uint8)
    path = str(tmp_path_factory.mktemp("drawn") / "volume.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    for name, volume in (("image", membrane * 255), ("membrane", membrane)):
        group.create_array(name, shape=volume.shape, dtype=np.uint8, chunks=(1, 40, 40))[:] = volume
    start, stop = SPLITS["val"]
    return path, membrane[start:stop]


class Pointwise(torch.nn.Module):
    """Membrane logits from each pixel alone, `slope` * (x - 0.5) + `bias`, taking only the
    tiles the run's geometry cuts, as an exported graph of fixed shape does."""

    def __init__(self, shape: tuple[int, ...], slope: float = 20.0, bias: float = 0.0) -> None:
        super().__init__()
        self.shape, self.slope, self.bias = shape, slope, bias
        self.batches = 0

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        assert tuple(tiles.shape) == self.shape, tiles.shape
        self.batches += 1
        return self.slope * (tiles - 0.5) + self.bias


TILES = {"unet2d": (4, 1, 32, 32), "unet3d_aniso": (4, 1, 3, 32, 32)}


@pytest.mark.parametrize("model", TILES)
def test_the_validator_scores_tiles_of_the_validation_sections(drawn, model):
    path, membrane = drawn
    config = run_config(model, {**EM, "tile": 32, "overlap": 8})
    validate = TASK.validator(path, config, torch.device("cpu"))
    assert validate.items == 5  # sections 20-24
    oracle = Pointwise(TILES[model])
    assert validate(oracle) == {"val_pixel_error": 0.0}
    assert oracle.batches > 1  # the sections went through as tiles, batch by batch
    # Never membrane: wrong on exactly the membrane pixels of the sections scored.
    never = Pointwise(TILES[model], slope=0.0, bias=-10.0)
    assert validate(never)["val_pixel_error"] == pytest.approx(membrane.mean())
    assert validate(never, [1, 3])["val_pixel_error"] == pytest.approx(membrane[[1, 3]].mean())
    first = TASK.validator(path, config, torch.device("cpu"), limit=2)
    assert first.items == 2
    assert first(never)["val_pixel_error"] == pytest.approx(membrane[:2].mean())


def test_em_takes_accuracy_control():
    check_consistency({
        "task": "isbi2012_em", "models": ["unet2d"], "methods": ["pt2e", "eager"],
        "calibration_sizes": [8], "accuracy_budget": 0.5, "sensitivity": {"enabled": True},
        "em": EM,
    })  # fmt: skip
    # The budgeted quantize and the sensitivity stage rerun when the tiling changes; the plain
    # quantize does not read it.
    settings = SPEC.stage_settings({"em": EM, "quantize": {}}, "validation")
    assert set(settings) == {"tile", "overlap", "tile_sections", "section_overlap", "block_tiles",
                             "inference_batch_size"}  # fmt: skip
    assert "overlap" not in SPEC.stage_settings(
        {"em": EM, "quantize": {"calibration_batch_size": 4}}, "quantize"
    )


# --- the stages on a trained U-Net --------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(tmp_path_factory, isbi_dir) -> str:
    path = tmp_path_factory.mktemp("em") / "isbi2012_em.zarr"
    prepare(str(isbi_dir), str(path), log=quiet)
    return str(path)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, volume) -> str:
    """A width-4 2D U-Net trained 100 steps (it learns some membrane: a validation pixel error
    below the 0.22 of calling every pixel cell), with FRAGILE made fragile, as a train-stage
    checkpoint."""
    folder = tmp_path_factory.mktemp("fragile")
    settings = {"em": EM, "train": {"device": "cpu", "log_every": 1000}}
    config = {"task": "isbi2012_em", "model": "unet2d", "width": 4, "seed": 0,
              **SPEC.stage_settings(settings, "train")}  # fmt: skip
    train.run(volume, str(folder / "trained.pt"), str(folder / "train.json"), config, log=quiet)
    checkpoint = torch.load(folder / "trained.pt", weights_only=False)
    net, _ = load_trained(folder / "trained.pt")
    block = net.get_submodule(FRAGILE.rsplit(".", 2)[0])
    with torch.no_grad():
        block.first.bn.weight[0], block.first.bn.bias[0] = 0.0, -1.0
        block.second.conv.weight[:, 0] = 1000.0
    path = folder / "model.pt"
    torch.save({**checkpoint, "state_dict": net.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, volume, fragile) -> tuple[str, dict]:
    """The sensitivity stage with eager INT8 (fbgemm's kernels) on the first 2 validation
    sections: (its metrics.json, its record)."""
    folder = tmp_path_factory.mktemp("sensitivity")
    config = run_config("unet2d", method="eager", calibration_method="histogram",
                        calibration_size=8, sensitivity_items=2)  # fmt: skip
    metrics = str(folder / "metrics.json")
    record = sensitivity.run(fragile, volume, str(folder / "sensitivity.csv"), metrics, config,
                             log=quiet)  # fmt: skip
    return metrics, record


def test_sensitivity_ranks_the_fragile_convolution_first(ranked):
    _, record = ranked
    assert record["score"] == "val_pixel_error" and record["higher_is_better"] is False
    assert record["validation_items"] == 2 and len(record["layers"]) == 15
    fp32 = record["score_fp32"]
    assert fp32 < 0.22  # it learned some membrane
    # Every layer INT8 misclassifies more pixels; FP32 on the fragile layer alone wins most back.
    first, *rest = record["layers"]
    assert first["layer"] == FRAGILE and first["rank"] == 1
    assert record["drop_points"] > 1
    assert first["recovery_points"] == pytest.approx(100 * (record["score_int8"] -
                                                            first["score_layer_fp32"]))  # fmt: skip
    assert first["recovery_points"] > 10 * max(abs(row["recovery_points"]) for row in rest)


@pytest.mark.parametrize("method", ["eager", pytest.param("pt2e", marks=pytest.mark.slow)])
def test_the_budget_keeps_the_fragile_convolution_in_fp32(volume, fragile, ranked, tmp_path,
                                                          method):  # fmt: skip
    """eager with fbgemm's kernels; pt2e fixes the tile's shape at export and is scored compiled
    by Inductor, as the benchmark runs it (one compilation per model scored: slow). The ranking
    is eager's for both: they name the same convolutions."""
    metrics, _ = ranked
    config = run_config("unet2d", method=method, calibration_method="histogram",
                        calibration_size=8, accuracy_budget=1.0)  # fmt: skip
    artifact = str(tmp_path / "int8.pt")
    record = quantize.run(fragile, volume, artifact, str(tmp_path / "metrics.json"), config,
                          sensitivity=metrics, log=quiet)["accuracy_control"]  # fmt: skip
    assert record["score"] == "val_pixel_error" and record["fp32_layers"] == [FRAGILE]
    # Plain INT8 missed the budget on the whole validation split; this model meets it.
    assert record["steps"][0]["drop_points"] > 1.0 >= record["drop_points"]
    assert record["drop_points"] == pytest.approx(
        100 * (record["score_int8"] - record["score_fp32"])
    )
    # The artifact, as the benchmark and the segment stage load it, scores what the search did.
    validate = TASK.validator(volume, config, torch.device("cpu"))
    loaded = validate(load_for_cpu(method, artifact))["val_pixel_error"]
    assert loaded == pytest.approx(record["score_int8"], abs=1e-6)


# --- the DAG ------------------------------------------------------------------------------------


def test_the_dag_ranks_budgets_benchmarks_and_segments_the_budgeted_variants(tmp_path):
    """A dry run of tests/configs/tiny_em.yaml with a budget: per INT8 configuration (pt2e,
    eager) a sensitivity job and a budgeted quantize job, whose variant is benchmarked and
    segments the stack like the others."""
    copy_repository(tmp_path)
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny_em.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "accuracy_budget": 0.5}))
    jobs = planned_jobs(tmp_path)
    assert jobs == {"prepare_data": 1, "train": 1, "sensitivity": 2, "quantize": 2,
                    "quantize_budget": 2, "benchmark": 5, "benchmark_gpu": 1, "segment": 5,
                    "report": 1, "summary": 1, "all": 1}  # fmt: skip
    planned = snakemake(tmp_path, "--dry-run")
    text = planned.stdout + planned.stderr
    for method in ("pt2e", "eager"):
        configuration = f"unet3d_aniso-w4-s0/{method}-histogram-c8"
        assert f"results/sensitivity/{configuration}/metrics.json" in text
        assert f"results/quantize/{configuration}-budget/int8.pt" in text
        variant = f"unet3d_aniso-w4-s0/int8-cpu-{method}-histogram-c8-budget"
        assert f"results/benchmark/any/{variant}/metrics.json" in text
        assert f"results/segment/{variant}/metrics.json" in text
