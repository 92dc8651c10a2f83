"""The whole DAG with training skipped: a user's own checkpoint (config `weights`), trained with
its own normalisation, imported by the train stage and quantized, benchmarked and reported like a
trained run; a changed recipe reruns nothing, a changed file everything downstream."""

import time
from functools import partial

import pandas as pd
import pytest
import torch
import yaml
from quantpipe.models import references as model_refs
from quantpipe.models.build import build_model
from quantpipe.models.weights import sha256
from quantpipe.tasks.cifar10.data import MEAN, STD, load_splits
from quantpipe.tasks.classification.images import normalize
from quantpipe.tasks.classification.training import evaluate
from test_weights import MEAN_STD, USERNET, USERPKG
from torch import nn
from workflowtools import copy_repository, planned_jobs, snakemake, tiny_config, with_userpkg


def trained_once(cifar_dir, val_size: int, steps: int = 100) -> tuple[nn.Module, dict]:
    """UserNet after `steps` SGD steps on CIFAR-10 normalised by MEAN_STD, as a user's own
    script would train it; (the net, its accuracy on the validation and test splits, and on the
    test split normalised by CIFAR-10's own statistics instead)."""
    torch.manual_seed(0)
    net = build_model(USERNET)
    splits = load_splits(str(cifar_dir), val_size)
    images, labels = splits["train"]
    mean, std = (torch.tensor(MEAN_STD[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (64,), generator=generator)
        loss = nn.functional.cross_entropy(net(normalize(images[index], mean, std)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    runs = {"val_given": ("val", mean, std), "test_given": ("test", mean, std),
            "test_cifar": ("test", MEAN, STD)}  # fmt: skip
    measured = {
        name: evaluate(net, *splits[split], torch.device("cpu"),
                       partial(normalize, mean=m, std=s), batch_size=256)
        for name, (split, m, s) in runs.items()
    }  # fmt: skip
    return net.eval(), measured


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory, cifar_dir):
    workdir = tmp_path_factory.mktemp("weights")
    copy_repository(workdir)
    config = tiny_config(workdir)
    config.pop("widths")  # a reference takes none
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(USERPKG))
        started = time.perf_counter()
        net, measured = trained_once(cifar_dir, config["val_size"])
        print(f"trained {USERNET} in {time.perf_counter() - started:.0f} s: {measured}")
    # A checkpoint as a training script writes it, named relative to the folder Snakemake runs in.
    torch.save({"model": net.state_dict(), "epoch": 1}, workdir / "mynet.pt")
    config.update(models=[USERNET], methods=["pt2e"],
                  weights={USERNET: {"path": "mynet.pt", **MEAN_STD}})  # fmt: skip
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", with_userpkg(workdir))
        started = time.perf_counter()
        snakemake(workdir)
        print(f"the DAG with imported weights took {time.perf_counter() - started:.0f} s")
        digest = sha256(workdir / "mynet.pt")
        changed_recipe = planned_jobs(workdir, "--config", "train={epochs: 3, lr: 0.1}")
        with torch.no_grad():  # a changed file: reruns the import and all that follows
            next(iter(net.parameters())).mul_(1.01)
        torch.save({"model": net.state_dict(), "epoch": 2}, workdir / "mynet.pt")
        changed_file = planned_jobs(workdir)
    return workdir, measured, digest, changed_recipe, changed_file


@pytest.mark.workflow
def test_imported_weights_go_through_the_whole_dag(imported_run):
    workdir, measured, digest, changed_recipe, changed_file = imported_run
    results = workdir / "results"
    folder = model_refs.run_folder(USERNET, None, 0)
    record = torch.load(results / "train" / folder / "model.pt", weights_only=True)["record"]
    assert record["weights"] == {"path": "mynet.pt", "sha256": digest, "imported": True,
                                 "adapted": {"format": "torch", "container": "model",
                                             "prefix_stripped": None, "ignored_keys": 0,
                                             "counters_filled": 0},
                                 **MEAN_STD}  # fmt: skip
    assert record["epochs_run_here"] == 0
    assert not (results / "train" / folder / "checkpoints").exists()
    # Calibration drew its images with the weights' normalisation too.
    quantized = yaml.safe_load((results / "quantize" / folder / "pt2e-histogram-c64" /
                                "metrics.json").read_text())  # fmt: skip
    assert {key: quantized["config"]["weights"][key] for key in MEAN_STD} == MEAN_STD
    report = pd.read_csv(results / "report.csv")
    cpu = report[report["device"] == "cpu"].set_index(["variant", "method"])
    assert (cpu["status"] == "ok").all(), cpu[["reason"]]
    fp32, int8 = cpu.loc[("fp32-cpu", "eager")], cpu.loc[("int8-cpu", "pt2e")]
    print(f"imported {USERNET}: FP32 {fp32['accuracy']:.4f} (measured by the test "
          f"{measured['test_given']:.4f}; with CIFAR-10's statistics it would be "
          f"{measured['test_cifar']:.4f}), INT8 pt2e {int8['accuracy']:.4f}, speedup "
          f"{int8['speedup_vs_fp32_cpu_eager']:.2f}, "
          f"size ratio {int8['size_ratio']:.2f}")  # fmt: skip
    # The same weights and normalisation, the same test images: the same accuracy, up to the
    # rounding of another batch layout and thread count (a few images at most).
    assert fp32["accuracy"] == pytest.approx(measured["test_given"], abs=1e-3)
    assert fp32["val_accuracy_fp32"] == pytest.approx(measured["val_given"], abs=1e-3)
    assert abs(measured["test_given"] - measured["test_cifar"]) > 0.01  # the path matters
    assert fp32["accuracy"] > 0.2 and abs(int8["accuracy"] - fp32["accuracy"]) < 0.03
    assert f"## Table 1: {USERNET}, node class any\n" in (results / "summary.md").read_text()
    # The recipe does not apply to imported weights (only the summary, which hashes the whole
    # config, says it changed); a changed file reruns the import and all that depends on it.
    assert changed_recipe == {"summary": 1, "all": 1}
    assert changed_file == {"train": 1, "quantize": 1, "benchmark": 2,
                            "report": 1, "summary": 1, "all": 1}  # fmt: skip
