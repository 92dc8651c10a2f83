"""The whole DAG on a user's own network, named by reference (`pkg.module:callable`, a package
outside quantpipe on PYTHONPATH), with an accuracy budget: one run serves both what a reference
must do in the DAG (train, quantize, benchmark, report; a method it cannot take refused before any
job) and accuracy control's wiring (sensitivity, INT8 within the budget by quantpipe's search and
by NNCF's). The units: tests/test_model_refs.py and tests/test_accuracy_control.py."""

import pandas as pd
import pytest
import torch
import yaml
from quantpipe.models import references as model_refs
from workflowtools import copy_repository, snakemake, tiny_config, with_userpkg

pytestmark = [pytest.mark.workflow, pytest.mark.timeout(2400)]
# tests/userpkg/usernets.py: UserNet (functional ReLUs, a strided-slice shortcut, one block
# called twice, no fusion groups) with a head that INT8 cannot represent.
FRAGILE_NET = "usernets:make_fragile"


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, cifar_dir):
    """The tiny DAG on the user's network with its fragile head, INT8 within 3 points by
    quantpipe's search (pt2e) and by NNCF's (openvino); then a dry run asking for eager, which
    the network cannot take. Returns (workdir, that dry run)."""
    workdir = tmp_path_factory.mktemp("user_model")
    copy_repository(workdir)
    config = tiny_config(workdir)
    config.pop("widths")  # width is the built-ins' knob: references keep the default
    config.update(models=[FRAGILE_NET], methods=["pt2e", "openvino"], accuracy_budget=3.0,
                  benchmark={**config["benchmark"], "gpu": False})  # fmt: skip
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    # The user's package comes from PYTHONPATH, as a user's would: Snakemake imports it to check
    # the model before any job, and every job it starts inherits the variable.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", with_userpkg(workdir))
        snakemake(workdir)
        refused = snakemake(workdir, "--dry-run", "--config", "methods=[pt2e,eager]", check=False)
    return workdir, refused


def test_a_reference_goes_through_the_whole_dag(user_run):
    workdir, refused = user_run
    results = workdir / "results"
    report = pd.read_csv(results / "report.csv")
    assert list(report["model"].unique()) == [FRAGILE_NET]
    assert report["width"].isna().all()  # no width: the reference builds its own network
    folder = model_refs.run_folder(FRAGILE_NET, None, 0)
    checkpoint = torch.load(results / "train" / folder / "model.pt", weights_only=True)
    assert checkpoint["architecture"] == {"name": FRAGILE_NET, "num_classes": 10}
    assert checkpoint["record"]["epochs_run_here"] == 1  # trained by the DAG, not imported
    rows = report[report["device"] == "cpu"]
    assert (rows["status"] == "ok").all(), rows[["variant", "method", "reason"]]
    measured = set(zip(rows["variant"], rows["method"], strict=True))
    # Each CPU row once: FP32 eager, compiled and OpenVINO's; INT8 plain and within the budget,
    # by each method.
    assert measured == {("fp32-cpu", "eager"), ("fp32-cpu", "compiled"), ("fp32-cpu", "openvino"),
                        ("int8-cpu", "pt2e"), ("int8-cpu", "pt2e-budget"), ("int8-cpu", "openvino"),
                        ("int8-cpu", "openvino-budget")} and len(rows) == len(measured)  # fmt: skip
    cpu = rows.set_index(["variant", "method"])
    fp32, int8 = cpu.loc[("fp32-cpu", "eager")], cpu.loc[("int8-cpu", "pt2e")]
    print(f"{FRAGILE_NET}: FP32 {fp32['accuracy']:.4f}, INT8 pt2e {int8['accuracy']:.4f}, "
          f"speedup {int8['speedup_vs_fp32_cpu_eager']:.2f}, "
          f"size ratio {int8['size_ratio']:.2f}")  # fmt: skip
    assert (rows[["accuracy", "images_per_s", "size_mb"]] > 0).all().all()
    assert fp32["accuracy"] > 0.15  # one short epoch, yet above chance (0.10)
    assert int8["size_ratio"] > 1
    assert f"## Table 1: {FRAGILE_NET}, node class any\n" in (results / "summary.md").read_text()
    # eager for a model without fusion groups: refused before any job, with the fix.
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "method 'eager' needs" in output and "Use method pt2e instead" in output
    assert "Job stats" not in output


def test_the_dag_keeps_the_fragile_layer_in_fp32_within_the_budget(user_run):
    results = user_run[0] / "results"
    folder = model_refs.run_folder(FRAGILE_NET, None, 0)
    ranking = pd.read_csv(results / "sensitivity" / folder / "pt2e-histogram-c64" /
                          "sensitivity.csv")  # fmt: skip
    assert ranking["layer"].iloc[0] == "head.1" and len(ranking) == 8
    assert ranking["recovery_points"].iloc[0] > 10 * ranking["recovery_points"].iloc[1:].abs().max()
    record = yaml.safe_load((results / "quantize" / folder / "pt2e-histogram-c64-budget" /
                             "metrics.json").read_text())["accuracy_control"]  # fmt: skip
    assert record["fp32_layers"] == ["head.1"]
    assert record["steps"][0]["drop_points"] > 3.0 >= record["drop_points"]
    report = pd.read_csv(results / "report.csv")
    cpu = report[report["device"] == "cpu"].set_index(["variant", "method"])
    assert (cpu["status"] == "ok").all(), cpu[["reason"]]
    plain, budget = cpu.loc[("int8-cpu", "pt2e")], cpu.loc[("int8-cpu", "pt2e-budget")]
    fp32 = cpu.loc[("fp32-cpu", "eager")]
    assert plain["fp32_layers"] == 0 and budget["fp32_layers"] == 1
    assert budget["accuracy_budget"] == 3.0
    # On the test split too: plain INT8 near chance, the budgeted one near FP32.
    assert fp32["accuracy"] - plain["accuracy"] > 0.1
    assert abs(fp32["accuracy"] - budget["accuracy"]) < 0.05
    assert budget["speedup_vs_fp32_cpu_eager"] > 0
    # NNCF's own search at the same budget, side by side.
    nncf = yaml.safe_load((results / "quantize" / folder / "openvino-histogram-c64-budget" /
                           "metrics.json").read_text())["accuracy_control"]  # fmt: skip
    # Its outcome is NNCF's (the IR counts a layer called twice twice); ours is checked above.
    assert nncf["search"] == "nncf" and len(nncf["fp32_layers"]) <= nncf["layers"]
    assert cpu.loc[("int8-cpu", "openvino-budget"), "fp32_layers"] == len(nncf["fp32_layers"])
    summary = (results / "summary.md").read_text()
    assert "pt2e-budget" in summary and "openvino-budget" in summary
    assert "## Per-layer sensitivity" in summary and "| 1 | head.1 | Linear |" in summary
    assert (results / "summary" / "sensitivity.png").stat().st_size > 0
