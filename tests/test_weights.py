"""Trained weights by reference (config `weights`, quantpipe.models.weights): loading a user's
file, the checks before any job, the import in the train stage and the normalisation the weights
were trained with. The whole DAG with training skipped: tests/test_weights_workflow.py."""

import hashlib
import json
import os
import zipfile

import pytest
import torch
from conftest import REPO
from quantpipe import tasks
from quantpipe.artifacts import ArtifactError
from quantpipe.configuration import check_consistency, coerce_to_schema
from quantpipe.models.build import build_model, load_trained
from quantpipe.models.weights import WeightsError, load_weights, sha256
from quantpipe.stages import train
from quantpipe.tasks.cifar10.data import MEAN, STD, load_splits
from quantpipe.tasks.classification.images import normalize
from quantpipe.tasks.classification.training import evaluate
from snakemake.utils import validate
from torch import nn

USERPKG = REPO / "tests" / "userpkg"
USERNET = "usernets:make_net"
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
# "[-1, 1]", as many training scripts normalise: far from CIFAR-10's own statistics.
MEAN_STD = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture
def userpkg(monkeypatch):
    monkeypatch.syspath_prepend(str(USERPKG))


def small_net() -> nn.Module:
    return build_model("resnet18_cifar", width=4)


def filled(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and buffer drawn at random, so a loaded copy is told from a fresh one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return net


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                          strict=True)
    )  # fmt: skip


# --- loading a file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [lambda state: state,
     lambda state: {"state_dict": state, "epoch": 90, "best_acc1": 0.71},
     lambda state: {"model": state, "optimizer": {"state": {}}, "args": ["--lr", "0.1"]}],
    ids=["state_dict", "checkpoint-state_dict", "checkpoint-model"],
)  # fmt: skip
def test_a_state_dict_or_a_checkpoint_loads(tmp_path, layout):
    source = filled(small_net())
    path = tmp_path / "weights.pt"
    torch.save(layout(source.state_dict()), path)
    net = small_net()
    load_weights(net, path, "resnet18_cifar")
    assert same_weights(net, source)


def test_a_train_stage_checkpoint_loads_too(tmp_path):
    source = filled(small_net())
    torch.save({"architecture": {}, "state_dict": source.state_dict(), "record": {}},
               tmp_path / "model.pt")  # fmt: skip
    net = small_net()
    load_weights(net, tmp_path / "model.pt", "resnet18_cifar")
    assert same_weights(net, source)


def test_mismatched_keys_are_listed_all_at_once(tmp_path):
    state = small_net().state_dict()
    state.pop("conv1.weight")
    state["head.extra"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(7, 32)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as caught:
        load_weights(small_net(), path, "resnet18_cifar")
    message = str(caught.value)
    assert str(path) in message and "does not fit model 'resnet18_cifar'" in message
    assert "1 missing keys: conv1.weight" in message
    assert "1 unexpected keys: head.extra" in message
    assert "1 of another shape: fc.weight (file (7, 32), model (10, 32))" in message


class Lit(nn.Module):
    """A LightningModule's state as Lightning saves it: the network under `model.`, beside a
    module of its own (the loss, with a class-weight buffer) that the network has not."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net
        self.loss = nn.CrossEntropyLoss(weight=torch.ones(10))


def lightning(state: dict, net: nn.Module) -> dict:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return {"epoch": 29, "global_step": 11730, "pytorch-lightning_version": "2.5.0",
            "state_dict": Lit(net).state_dict(), "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [], "hyper_parameters": {"lr": 0.1, "width": 4}}  # fmt: skip


def without_counters(state: dict, net: nn.Module) -> dict:
    """As a script that filtered or converted the keys writes it: a plain dict, so without the
    version metadata of the state_dict, and here without BatchNorm's num_batches_tracked."""
    return {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}


def ema(state: dict, net: nn.Module) -> dict:
    """A checkpoint whose "model" holds other (the last step's) weights than its EMA copy."""
    return {"model": filled(small_net(), seed=1).state_dict(), "ema": state, "epoch": 90}


def save_safetensors(content: dict, path) -> None:
    from safetensors.torch import save_file

    save_file(content, path, metadata={"format": "pt"})


COUNTERS = sum(isinstance(module, nn.BatchNorm2d) for module in small_net().modules())  # 20
# (writes the file from the source network's state_dict and the network, the entry's keys, what
# is recorded as adapted apart from the format "torch", the container None, no prefix and 0s)
LAYOUTS = {
    "module": (lambda state, net: nn.DataParallel(net).state_dict(), {},
               {"prefix_stripped": "module."}),
    "_orig_mod": (lambda state, net: torch.compile(net).state_dict(), {},
                  {"prefix_stripped": "_orig_mod."}),
    "module._orig_mod": (lambda state, net: nn.DataParallel(torch.compile(net)).state_dict(), {},
                         {"prefix_stripped": "module._orig_mod."}),
    "lightning": (lightning, {"prefix": "model."},
                  {"container": "state_dict", "prefix_stripped": "model.", "ignored_keys": 1}),
    "lightning-no-dot": (lightning, {"prefix": "model"},
                         {"container": "state_dict", "prefix_stripped": "model.",
                          "ignored_keys": 1}),
    **{container: (lambda state, net, container=container: {
           container: state, "best_prec1": 71.25, "epoch": 90, "arch": "resnet18_cifar",
           "optimizer": torch.optim.SGD(net.parameters(), lr=0.1).state_dict()},
                   {}, {"container": container})
       for container in ("state_dict", "model", "model_state_dict", "net")},
    "ema": (ema, {"key": "ema"}, {"container": "ema"}),
    "model_ema": (lambda state, net: {"model": {}, "model_ema": state}, {"key": "model_ema"},
                  {"container": "model_ema"}),
    "counters-missing": (without_counters, {}, {"counters_filled": COUNTERS}),
    "safetensors": (lambda state, net: state, {}, {"format": "safetensors"}),
    "safetensors-compiled": (lambda state, net: torch.compile(net).state_dict(), {},
                             {"format": "safetensors", "prefix_stripped": "_orig_mod."}),
}  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoints_load_as_users_have_them(tmp_path, layout):
    """Each layout training scripts leave loads, unchanged, into the network the run builds: the
    same weights, the same outputs, and the adaptation said and returned."""
    write, entry, expected = LAYOUTS[layout]
    source = filled(small_net()).eval()
    content = write(source.state_dict(), source)
    path = tmp_path / ("weights.safetensors" if "safetensors" in layout else "weights.pt")
    (save_safetensors if "safetensors" in layout else torch.save)(content, path)
    net, said = small_net(), []
    adapted = load_weights(net, path, "resnet18_cifar", log=said.append, **entry)
    assert adapted == {"format": "torch", "container": None, "prefix_stripped": None,
                       "ignored_keys": 0, "counters_filled": 0, **expected}  # fmt: skip
    assert same_weights(net, source)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net.eval()(image), source(image))
    assert len(said) == 1 and said[0].startswith(f"weights {path}: ")
    if layout.startswith("lightning"):
        assert "1 keys outside prefix" in said[0] and "ignored: loss.weight" in said[0]
    if layout == "counters-missing":
        assert f"{COUNTERS} missing counters filled by PyTorch: bn1.num_batches_tracked" in said[0]


def test_tensors_saved_on_a_gpu_load_on_a_cpu_only_node(tmp_path, monkeypatch):
    """A file as torch.save writes it from a GPU: its storages tagged "cuda:0". Without CUDA,
    such a file is made by tagging CPU storages so (torch.serialization's own registry, the only
    thing patched, and for the save alone); the load below is the one users run."""
    source = filled(small_net()).eval()
    monkeypatch.setattr(torch.serialization, "_package_registry",
                        list(torch.serialization._package_registry))  # fmt: skip
    torch.serialization.register_package(0, lambda storage: "cuda:0", lambda storage, tag: None)
    path = tmp_path / "gpu.pt"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 3}, path)
    monkeypatch.undo()
    assert b"cuda:0" in zipfile.ZipFile(path).read("gpu/data.pkl")
    if not torch.cuda.is_available():  # what a plain torch.load does on such a node
        with pytest.raises(RuntimeError, match="on a CUDA device but torch.cuda.is_available"):
            torch.load(path, weights_only=True)
    net = small_net()
    load_weights(net, path, "resnet18_cifar", log=lambda _: None)
    assert same_weights(net, source)
    assert all(tensor.device.type == "cpu" for tensor in net.state_dict().values())


def test_counters_are_filled_exactly_where_pytorch_fills_them(tmp_path):
    """The check is PyTorch's strict load_state_dict's, asked of PyTorch: BatchNorm's missing
    num_batches_tracked is filled in a file without version metadata, and refused, as PyTorch
    refuses it, in a state_dict that says it was saved with the counter."""
    state = filled(small_net()).state_dict()
    counters = [key for key in state if key.endswith("num_batches_tracked")]
    for key in counters:
        del state[key]  # the state_dict's own version metadata stays
    with pytest.raises(RuntimeError, match="Missing key"):
        small_net().load_state_dict(state)
    torch.save(state, tmp_path / "versioned.pt")
    with pytest.raises(WeightsError, match=rf"{len(counters)} missing keys: bn1.num_batches"):
        load_weights(small_net(), tmp_path / "versioned.pt", "resnet18_cifar")
    plain = dict(state)
    small_net().load_state_dict(plain)  # PyTorch takes it
    torch.save(plain, tmp_path / "plain.pt")
    adapted = load_weights(small_net(), tmp_path / "plain.pt", "resnet18_cifar")
    assert adapted["counters_filled"] == len(counters) == COUNTERS


def test_a_mismatch_behind_adaptations_is_still_listed_in_full(tmp_path):
    state = {f"module.{key}": value for key, value in small_net().state_dict().items()
             if not key.endswith("num_batches_tracked")}  # fmt: skip
    state.pop("module.conv1.weight")
    state["module.head.extra"] = torch.zeros(3)
    state["module.fc.weight"] = torch.zeros(7, 32)
    path = tmp_path / "other.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    with pytest.raises(WeightsError) as caught:
        load_weights(small_net(), path, "resnet18_cifar")
    message = str(caught.value)
    # The counters are not missing (PyTorch fills them); the rest is, with the prefix stripped.
    assert "1 missing keys: conv1.weight;" in message
    assert "1 unexpected keys: head.extra" in message
    assert "1 of another shape: fc.weight (file (7, 32), model (10, 32))" in message


def test_a_prefix_no_key_carries_is_refused_naming_it(tmp_path):
    source = small_net()
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning(source.state_dict(), source), path)
    with pytest.raises(WeightsError) as caught:
        load_weights(small_net(), path, "resnet18_cifar", prefix="net.")
    message = str(caught.value)
    assert f"{path}: no key starts with the entry's prefix 'net.'" in message
    assert "the file's keys: model.conv1.weight, model.bn1.weight" in message


def test_a_prefix_not_named_is_suggested(tmp_path):
    source = small_net()
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning(source.state_dict(), source), path)
    with pytest.raises(WeightsError, match=r"fit under the prefix 'model\.': name it in the entry "
                                           r"\(prefix: model\.\)"):  # fmt: skip
        load_weights(small_net(), path, "resnet18_cifar")


def test_a_key_naming_no_dict_is_refused_showing_the_files_keys(tmp_path):
    torch.save({"model": small_net().state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match=r"holds no dict under 'ema', the entry's key \(its "
                                           r"keys: model, epoch\)"):  # fmt: skip
        load_weights(small_net(), tmp_path / "ckpt.pt", "resnet18_cifar", key="ema")


def test_what_is_no_state_dict_is_refused_saying_how_to_save_one(tmp_path):
    cases = {
        "list.pt": ([torch.zeros(1)], r"holds a list, not a state_dict"),
        "counters.pt": ({"epoch": 3, "conv.weight": torch.zeros(1)}, r"epoch hold no tensor"),
    }
    for name, (content, expected) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(WeightsError, match=expected) as caught:
            load_weights(small_net(), tmp_path / name, "resnet18_cifar")
        assert "torch.save(net.state_dict(), path)" in str(caught.value)
    # A whole pickled module needs code to load: weights_only refuses it.
    torch.save(small_net(), tmp_path / "module.pt")
    with pytest.raises(ArtifactError, match="not a safe tensor file"):
        load_weights(small_net(), tmp_path / "module.pt", "resnet18_cifar")


def test_sha256_is_the_files():
    path = REPO / "tests" / "configs" / "tiny.yaml"
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- the checks before any job -------------------------------------------------------------------


def config_with(tmp_path, entry: dict | None = None, **changes) -> dict:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"checked for existence only")
    entry = {"path": str(path), **(entry or {})}
    config = {"models": ["resnet18_cifar"], "widths": [16], "methods": ["pt2e"],
              "val_size": 5000, "calibration_sizes": [512], "num_classes": 10,
              "weights": {"resnet18_cifar": entry}}  # fmt: skip
    return {**config, **changes}


def test_a_valid_entry_passes(tmp_path):
    check_consistency(config_with(tmp_path, {**MEAN_STD, "prefix": "model.", "key": "ema"}))


@pytest.mark.parametrize(
    "change,expected",
    [({"models": ["resnet18"]},
      r"weights\['resnet18_cifar'\] names no model of `models` \['resnet18'\]: add"),
     ({"widths": [8, 16]},
      r"the weights fit one width, but widths sweeps \[8, 16\]\. Set widths to the one")],
)  # fmt: skip
def test_an_entry_that_does_not_fit_the_sweep_is_refused(tmp_path, change, expected):
    with pytest.raises(ValueError, match=expected):
        check_consistency(config_with(tmp_path, **change))


def test_a_missing_file_is_named_with_the_fix(tmp_path):
    config = config_with(tmp_path, {"path": "nets/absent.pt"})
    with pytest.raises(ValueError) as caught:
        check_consistency(config)
    message = str(caught.value)
    assert "the weights file nets/absent.pt does not exist" in message
    assert os.path.abspath("nets/absent.pt") in message and "Fix its path" in message


def test_mean_and_std_of_different_lengths_are_refused(tmp_path):
    config = config_with(tmp_path, {"mean": [0.5, 0.5, 0.5], "std": [0.5]})
    with pytest.raises(ValueError, match="mean has 3 values and std 1"):
        check_consistency(config)


def test_the_schema_takes_entries_and_types_them_from_the_command_line(tmp_path):
    config = config_with(tmp_path, {"mean": ["0.5", "0.5", "0.5"], "std": ["0.5"] * 3})
    coerce_to_schema(config, SCHEMA)
    assert config["weights"]["resnet18_cifar"]["mean"] == [0.5, 0.5, 0.5]
    validate(config, SCHEMA, set_default=True)
    validate({"weights": {"resnet18_cifar": {"path": "w.ckpt", "prefix": "model.", "key": "ema"}}},
             SCHEMA, set_default=True)  # fmt: skip
    refused = [({"path": "w.pt", "prefix": ""}, "should be non-empty"),
               ({"path": "w.pt", "key": ["ema"]}, "is not of type 'string'"),
               ({"path": "w.pt", "std": [0.5, 0.5, 0.5]}, "'mean' is a dependency of 'std'"),
               ({"mean": [0.5]}, "'path' is a required property"),
               ({"path": "w.pt", "file": "w.pt"}, r"\('file' was unexpected\)"),
               ({"path": "w.pt", "mean": [1], "std": [0]}, "0 is less than or equal")]  # fmt: skip
    for entry, expected in refused:
        with pytest.raises(Exception, match=expected):
            validate({"weights": {"resnet18_cifar": entry}}, SCHEMA, set_default=True)


def test_the_em_task_takes_weights_but_no_normalisation(tmp_path):
    config = {**config_with(tmp_path), "task": "isbi2012_em", "models": ["unet2d"],
              "em": {"patch_size": 64, "tile": 64, "overlap": 8, "section_overlap": 1,
                     "sections": 3}}  # fmt: skip
    config["weights"] = {"unet2d": config["weights"].pop("resnet18_cifar")}
    check_consistency(config)
    config["weights"]["unet2d"].update(MEAN_STD)
    with pytest.raises(ValueError, match=r"takes no mean or std, its inputs are pixels/255"):
        check_consistency(config)


# --- the normalisation of the run ----------------------------------------------------------------


def test_the_run_normalises_as_its_weights_were_trained():
    task = tasks.load("cifar10")
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    own = {"model": "resnet18_cifar"}
    imported = {**own, "weights": {"path": "w.pt", **MEAN_STD}}
    data = "resources/cifar-10-batches-py"  # CIFAR-10's statistics are the task's, not read
    torch.testing.assert_close(task.normalizer(data, own)(images), normalize(images, MEAN, STD))
    torch.testing.assert_close(task.normalizer(data, imported)(images), images / 255 * 2 - 1)
    assert task.normalization(data, imported) == MEAN_STD
    assert task.normalization(data, own)["mean"] == [0.4914, 0.4822, 0.4465]
    bad = {**own, "weights": {"path": "w.pt", "mean": [0.5], "std": [0.5]}}
    with pytest.raises(ValueError, match="need one value per input channel, 3 for task"):
        task.normalizer(data, bad)


# --- the train stage imports ---------------------------------------------------------------------

RUN = {"model": USERNET, "width": None, "seed": 0, "num_classes": 10, "val_size": 1000,
       "device": "auto"}  # fmt: skip


@pytest.mark.slow
def test_the_train_stage_imports_instead_of_training(userpkg, tmp_path, cifar_dir):
    source = build_model(USERNET).eval()
    with torch.no_grad():  # batch norm statistics of real-looking inputs, as after training
        source.train()(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    # A Lightning checkpoint of the network compiled with torch.compile, taken as it is.
    weights = tmp_path / "mynet.ckpt"
    torch.save({"state_dict": Lit(torch.compile(source)).state_dict(), "epoch": 30}, weights)
    config = {**RUN, "weights": {"path": str(weights), "prefix": "model.", **MEAN_STD}}
    out, said = tmp_path / "train", []
    record = train.run(str(cifar_dir), str(out / "model.pt"), str(out / "metrics.json"), config,
                       weights=str(weights), log=said.append)  # fmt: skip
    adapted = {"format": "torch", "container": "state_dict", "prefix_stripped": "model._orig_mod.",
               "ignored_keys": 1, "counters_filled": 0}  # fmt: skip
    assert record["weights"] == {"path": str(weights), "sha256": sha256(weights),
                                 "imported": True, "adapted": adapted, **MEAN_STD}  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["weights"]["adapted"] == adapted
    assert (f"train: weights {weights}: the state_dict under 'state_dict'; prefix "
            "'model._orig_mod.' stripped; 1 keys outside prefix 'model.' ignored: loss.weight"
            in said)  # fmt: skip
    assert record["epochs_run_here"] == 0 and record["history"] == []
    assert not (out / "checkpoints").exists()
    val_images, val_labels = load_splits(str(cifar_dir), 1000)["val"]
    mean, std = (torch.tensor(MEAN_STD[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    expected = evaluate(source, val_images, val_labels, torch.device("cpu"),
                        lambda batch: normalize(batch, mean, std))  # fmt: skip
    assert record["val_accuracy"] == pytest.approx(expected, abs=1e-3)
    loaded, saved = load_trained(str(out / "model.pt"))
    assert same_weights(loaded, source) and saved["weights"]["sha256"] == sha256(weights)


def test_weights_in_the_config_need_their_file(tmp_path):
    config = {**RUN, "weights": {"path": "mynet.pt"}}
    with pytest.raises(ValueError, match=r"quantpipe train --weights PATH"):
        train.run("data", str(tmp_path / "model.pt"), str(tmp_path / "m.json"), config)


def test_weights_that_do_not_fit_fail_the_import_naming_the_file(userpkg, tmp_path, cifar_dir):
    weights = tmp_path / "resnet.pt"
    torch.save(small_net().state_dict(), weights)
    config = {**RUN, "weights": {"path": str(weights)}}
    with pytest.raises(WeightsError, match=rf"{weights} does not fit model '{USERNET}'"):
        train.run(str(cifar_dir), str(tmp_path / "model.pt"), str(tmp_path / "m.json"), config,
                  weights=str(weights), log=lambda _: None)  # fmt: skip


def test_the_em_task_imports_with_its_validation(tmp_path, isbi_dir):
    from quantpipe.tasks.isbi2012_em.data import prepare

    volume = str(tmp_path / "isbi2012_em.zarr")
    prepare(str(isbi_dir), volume, log=lambda _: None)
    weights = tmp_path / "unet.pt"
    torch.save(build_model("unet2d", width=2).state_dict(), weights)
    config = {"task": "isbi2012_em", "model": "unet2d", "width": 2, "seed": 0, "device": "auto",
              "weights": {"path": str(weights)}}  # fmt: skip
    record = train.run(volume, str(tmp_path / "model.pt"), str(tmp_path / "m.json"), config,
                       weights=str(weights), log=lambda _: None)  # fmt: skip
    assert 0 <= record["val_pixel_error"] <= 1
    assert record["weights"]["mean"] is None and record["weights"]["imported"]
