"""The EM benchmark stage (task isbi2012_em): each CPU row is timed in rounds over the tiled volume
path through the whole stack, paired round by round with the FP32 eager model in the same
process, and scored on the test sections; a GPU-less row without a reference has rounds but no
pair. A deliberately slower variant sleeps in every forward pass, so its paired speedup is below
1 whatever the machine does."""

import time

import pytest
import torch
from quantpipe.models.build import build_model
from quantpipe.stages import benchmark
from quantpipe.tasks.isbi2012_em import benchmark as em
from quantpipe.tasks.isbi2012_em.data import load_split, load_stack, prepare

CONFIG = {
    "task": "isbi2012_em", "variant": "fp32-cpu", "node_class": "any", "model": "unet2d",
    "width": 2, "seed": 0, "gpu": False, "rounds": 3, "share_seconds": 0, "tile_sections": 3,
    "tile": 128, "overlap": 16, "section_overlap": 1, "block_tiles": 3, "inference_batch_size": 4,
    "threshold": 0.5,
}  # fmt: skip


class Sleepy(torch.nn.Module):
    """The model, after a sleep: slower by at least the sleep per forward pass, two per volume
    pass here, more than a busy machine's noise on the model's own pass."""

    def __init__(self, net: torch.nn.Module, seconds: float = 0.5) -> None:
        super().__init__()
        self.net, self.seconds = net, seconds

    def forward(self, tiles):
        time.sleep(self.seconds)
        return self.net(tiles)


@pytest.fixture(scope="module")
def volume(tmp_path_factory, isbi_dir):
    path = tmp_path_factory.mktemp("em") / "isbi2012-em.zarr"
    prepare(str(isbi_dir), str(path), log=lambda _: None)
    return str(path)


STACK_SECTIONS = 8  # blocks of 3, 3 and 2 sections


@pytest.fixture(autouse=True)
def small_volumes(monkeypatch):
    """Sections cropped to 112 x 112 (with its halo, one 128-wide tile a section), the timed
    stack to its first 8: the timing is what this checks, not the scores."""

    def crop(data, split):
        return tuple(part[:, :112, :112] for part in load_split(data, split))

    monkeypatch.setattr(em, "load_split", crop)
    monkeypatch.setattr(
        em, "load_stack", lambda data: load_stack(data)[:STACK_SECTIONS, :112, :112]
    )


@pytest.mark.slow
def test_cpu_rows_carry_rounds_and_the_pair_with_fp32_eager(volume, tmp_path, stub_benchmark):
    torch.manual_seed(0)
    net = build_model("unet2d", width=2, num_classes=1).eval()
    stub_benchmark(net, "sleepy", Sleepy(net))
    record = benchmark.run("unread.pt", volume, str(tmp_path / "metrics.json"),
                           str(tmp_path / "predictions.pt"), CONFIG, log=print)  # fmt: skip
    rows = {row["method"]: row for row in record["rows"]}
    for row in rows.values():
        assert row["status"] == "ok" and row["rounds"] == 3
        for key in ("voxels_per_s", "paired_speedup", "reference_voxels_per_s",
                    "network_voxels_per_s"):  # fmt: skip
            assert row[key] > 0, key
        assert row["voxels_per_s_spread"] >= 0 and row["paired_speedup_spread"] >= 0
        assert row["voxels"] == STACK_SECTIONS * 112 * 112
        assert row["test_set_seconds"] == pytest.approx(5 * 112 * 112 / row["voxels_per_s"])
        assert row["job_hours_per_mm3"] == pytest.approx(1.5625e15 / row["voxels_per_s"] / 3600)
        assert 0 <= row["v_rand"] <= 1
    assert rows["sleepy"]["paired_speedup"] < 1
    # The same weights: the same probability, whichever pass wrote it.
    predictions = torch.load(tmp_path / "predictions.pt", weights_only=True)
    assert torch.equal(predictions["eager"], predictions["sleepy"])


@pytest.mark.slow
def test_without_a_reference_rows_have_rounds_and_no_pair(volume, tmp_path):
    torch.manual_seed(0)
    net = Sleepy(build_model("unet2d", width=2, num_classes=1).eval(), seconds=0.2)
    rows, _, _ = em.benchmark(
        volume, [("sleepy", torch.device("cpu"), net, 0)], {"variant": "fp32-cpu"}, CONFIG,
        log=lambda _: None,
    )  # fmt: skip
    assert rows[0]["rounds"] == 3 and rows[0]["voxels_per_s"] > 0
    assert rows[0]["share_rounds"] == 3  # share_seconds 0: the rounds asked for, no more
    assert "paired_speedup" not in rows[0] and "reference_voxels_per_s" not in rows[0]
    # The network alone on the same tiles: this one sleeps at least 0.2 s in each forward pass,
    # three per pass of the stack (one batch a block), so its rate over the output's voxels is
    # below voxels / 0.6 s whatever the machine does; over the tiles' voxels (1.3 times as
    # many) it would not be. The share's arithmetic is checked on a clock of its own in
    # test_em_tiling.py: here it only has to be there.
    assert rows[0]["voxels"] == STACK_SECTIONS * 112 * 112
    assert rows[0]["network_voxels_per_s"] < rows[0]["voxels"] / (3 * 0.2)
    assert rows[0]["path_fraction_of_network"] > 0
