"""Speed from timed rounds, CPU speedups paired with FP32 eager in the same process, the
batch-size curve, and the other Slurm jobs a benchmark saw on its node. No assertion on a time:
only that the fields are there and make sense."""

import pytest
import torch
from quantpipe import tasks
from quantpipe.models.build import build_model
from quantpipe.stages import benchmark
from quantpipe.submit import neighbours
from quantpipe.tasks.classification import rounds
from quantpipe.tasks.classification.rounds import batch_curve, timed_rounds

CONFIG = {"task": "cifar10", "variant": "fp32-cpu", "node_class": "any",
          "model": "resnet18_cifar", "width": 4, "seed": 0, "num_classes": 10, "val_size": 5000,
          "batch_size": 256, "warmup": 1, "latency_iterations": 10, "rounds": 5,
          "paired_images": 512, "batch_sizes": [16, 64]}  # fmt: skip


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18_cifar", width=4, num_classes=10).eval()


class Fourfold(torch.nn.Module):
    """The model run four times per call: a variant with about a quarter of its speed. Four, not
    two: a round shares 2 cores with the other test worker's jobs, and a round in which only the
    reference was preempted once read a variant with twice the work as 1.37x faster."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images):
        for _ in range(3):
            self.net(images)
        return self.net(images)


@pytest.mark.slow
def test_rounds_give_a_median_and_a_range_and_a_pair():
    net, images = tiny_model(), uint8_images(64)
    config = {"batch_size": 16, "warmup": 1, "rounds": 5}
    alone = timed_rounds(net, images, torch.device("cpu"), config, as_input)
    assert set(alone) == {"images_per_s", "images_per_s_spread", "batch_latency_ms_p50", "rounds",
                          "round_images"}  # fmt: skip
    assert alone["images_per_s"] > 0 and alone["images_per_s_spread"] >= 0
    assert alone["batch_latency_ms_p50"] > 0
    assert (alone["rounds"], alone["round_images"]) == (5, 64)
    paired = timed_rounds(Fourfold(net), images, torch.device("cpu"), config, as_input, net)
    # The variant does four times the reference's work: its speedup over the reference is about
    # 0.25, and a pairing that swapped the two would read about 4.
    assert 0 < paired["paired_speedup"] < 0.8 and paired["paired_speedup_spread"] >= 0
    assert paired["reference_images_per_s"] > 0


def uint8_images(count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)


def as_input(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255


@pytest.mark.slow
def test_the_curve_has_one_entry_per_batch_size_and_says_why_one_is_not_timed():
    images = uint8_images(10)
    config = {"batch_sizes": [1, 4, 10, 16], "warmup": 1, "rounds": 3}
    curve = batch_curve(tiny_model(), images, torch.device("cpu"), config, as_input)
    assert [point["batch_size"] for point in curve] == [1, 4, 10, 16]
    for point in curve[:3]:
        assert point["status"] == "ok" and point["reason"] == ""
        assert point["images_per_s"] > 0 and point["images_per_s_spread"] >= 0
        assert point["batch_latency_ms_p50"] > 0
        assert (point["rounds"], point["round_images"]) == (3, 10)
    # 16 images do not fit in the 10 that every round passes over: no number, a reason.
    assert curve[3] == {
        "batch_size": 16, "status": "skipped",
        "reason": "batch 16 exceeds the 10 test images timed in each round",
    }  # fmt: skip
    assert batch_curve(tiny_model(), images, torch.device("cpu"), {**config, "batch_sizes": []},
                       as_input) == []  # fmt: skip


def test_a_compiled_module_compiles_every_shape_before_its_clock_starts(monkeypatch):
    """Each batch size's shapes (the whole batch and the last, partial one) are warmed up
    first: no compilation happens inside a timed pass."""
    compiled_while_timing, timing = [], [False]

    def backend(graph, example_inputs):
        compiled_while_timing.append(timing[0])
        return graph.forward

    timed_pass = rounds._batch_seconds

    def watched(*args):
        timing[0] = True
        try:
            return timed_pass(*args)
        finally:
            timing[0] = False

    monkeypatch.setattr(rounds, "_batch_seconds", watched)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 10),
    ).eval()  # fmt: skip
    config = {"batch_sizes": [1, 4, 8], "warmup": 1, "rounds": 2}  # shapes 1, 4, 8 and 2
    # dynamic=False: every new shape compiles, as a model that cannot take a dynamic batch does.
    curve = batch_curve(torch.compile(net, backend=backend, dynamic=False), uint8_images(10),
                        torch.device("cpu"), config, as_input)  # fmt: skip
    torch._dynamo.reset()
    assert [point["status"] for point in curve] == ["ok"] * 3
    assert compiled_while_timing, "the backend never compiled: the test checks nothing"
    assert not any(compiled_while_timing)


@pytest.mark.slow
def test_cpu_rows_carry_their_pair_and_their_node_neighbours(
    tmp_path, cifar_dir, monkeypatch, stub_benchmark
):
    net = tiny_model()
    stub_benchmark(net, "fourfold", Fourfold(net))
    # The first 1,000 test images: the test pass is not what this checks.
    cifar10 = type(tasks.load("cifar10"))
    splits = cifar10.splits
    monkeypatch.setattr(
        cifar10, "splits", lambda self, data, config: {
            name: tuple(part[:1000] for part in split)
            for name, split in splits(self, data, config).items()
        },
    )  # fmt: skip
    record = benchmark.run("unread.pt", str(cifar_dir), str(tmp_path / "metrics.json"),
                           str(tmp_path / "predictions.pt"), CONFIG, log=print)  # fmt: skip
    rows = {row["method"]: row for row in record["rows"]}
    for row in rows.values():
        assert row["status"] == "ok" and row["rounds"] == 5 and row["round_images"] == 512
        for key in ("images_per_s", "paired_speedup", "reference_images_per_s"):
            assert row[key] > 0, key
        assert row["images_per_s_spread"] >= 0 and row["paired_speedup_spread"] >= 0
        assert row["neighbours_at_start"] is None and row["neighbours_at_end"] is None
        assert [point["batch_size"] for point in row["batch_curve"]] == [16, 64]
        assert all(point["images_per_s"] > 0 for point in row["batch_curve"])
        assert "not a Slurm job" in row["neighbours_reason"]
    assert record["provenance"]["cpu_model"] and "slurm_node" in record["provenance"]
    # The direction of the pair: the variant with four times the work is slower than FP32 eager,
    # and slower than eager paired with itself (near 1 on a quiet machine; beside the other test
    # worker's pipelines it strays, 0.62 with a range of 21 in one run, so no fixed bound on it).
    # Rounds of 512 images (about 80 ms for eager), not 128: one preemption is a smaller share.
    assert rows["fourfold"]["paired_speedup"] < min(0.8, rows["eager"]["paired_speedup"])
    eager, fourfold = rows["eager"], rows["fourfold"]
    print(
        f"paired speedups: eager (itself) {eager['paired_speedup']:.3f} "
        f"(range {eager['paired_speedup_spread']:.3f}), fourfold {fourfold['paired_speedup']:.3f} "
        f"(range {fourfold['paired_speedup_spread']:.3f})"
    )


def test_neighbours_are_the_other_jobs_squeue_lists_on_the_node(monkeypatch):
    assert neighbours.other_jobs("1017\n998\n\n1020\n", "1017") == ["1020", "998"]
    assert neighbours.other_jobs("", "1017") == []
    monkeypatch.setenv("SLURMD_NODENAME", "cpu-07")
    monkeypatch.setenv("SLURM_JOB_ID", "1017")
    asked = []

    def squeue(args):
        asked.append(args)
        return True, "1017\n1020"

    monkeypatch.setattr(neighbours, "slurm_query", squeue)
    start = neighbours.on_this_node()
    assert start == {"jobs": ["1020"], "reason": ""}
    assert asked[0][asked[0].index("-w") + 1] == "cpu-07"
    monkeypatch.setattr(neighbours, "slurm_query", lambda args: (False, "slurmctld down"))
    end = neighbours.on_this_node()
    assert end["jobs"] is None and "slurmctld down" in end["reason"]
    assert neighbours.row_fields(start, end) == {
        "neighbours_at_start": 1, "neighbours_at_end": None, "neighbour_jobs": "1020",
        "neighbours_reason": "squeue did not answer: slurmctld down",
    }  # fmt: skip
    monkeypatch.delenv("SLURMD_NODENAME")
    assert "not a Slurm job" in neighbours.on_this_node()["reason"]
