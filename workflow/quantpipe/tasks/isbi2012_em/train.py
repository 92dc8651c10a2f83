"""Train a membrane U-Net on the ISBI 2012 training sections (the train stage for task isbi2012_em).

Patches are random crops of the 20 training sections with random flips and 90-degree rotations,
2D for `unet2d`, stacks of `sections` sections for `unet3d_aniso`; pixels are uint8/255, nothing
else, exactly what the tiled inference feeds. Loss: binary cross-entropy on membrane logits
(membrane pixels optionally up-weighted); AdamW with a one-cycle schedule. An epoch is
`steps_per_epoch` steps; after each, the pixel error on the 5 validation sections is recorded and a
checkpoint written: device choice, checkpoints, resume and the record are quantpipe.stages.train's.
"""

import time

import numpy as np
import torch
from quantpipe import provenance
from quantpipe.models import build_model
from quantpipe.stages.train import (
    checkpoint_path_for,
    choose_device,
    epoch_generator,
    one_cycle,
    resume,
    save_checkpoint,
    save_trained,
)
from quantpipe.tasks.isbi2012_em.data import load_split
from torch import nn


def architecture(config: dict) -> dict:
    return {"name": config["model"], "width": config["width"]}


def patch_shape(config: dict, edge: int) -> tuple[int, ...]:
    """A patch's (Y, X) for unet2d, (Z, Y, X) for unet3d_aniso."""
    if config["model"] == "unet3d_aniso":
        return (config["sections"], edge, edge)
    return (edge, edge)


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]: the only normalisation, the same as the tiled inference's."""
    return pixels.float().div_(255)


def crops(volumes, count: int, shape: tuple[int, ...], generator: torch.Generator):
    """`count` random crops of `shape` at the same places in each of `volumes` (uint8 (Z, Y, X)),
    each as (count, 1, *shape): 2D shapes take one section, 3D ones consecutive sections."""
    depth, height, width = volumes[0].shape
    size = (1, *shape) if len(shape) == 2 else shape
    if any(have < want for have, want in zip((depth, height, width), size, strict=True)):
        raise ValueError(f"patches of {shape} do not fit in a volume of {volumes[0].shape}")
    starts = [
        torch.randint(0, have - want + 1, (count,), generator=generator)
        for have, want in zip((depth, height, width), size, strict=True)
    ]
    out = []
    for volume in volumes:
        picked = [
            volume[z : z + size[0], y : y + size[1], x : x + size[2]]
            for z, y, x in zip(*(start.tolist() for start in starts), strict=True)
        ]
        stacked = torch.as_tensor(np.stack(picked))[:, None]  # (count, 1, Z, Y, X)
        out.append(stacked[:, :, 0] if len(shape) == 2 else stacked)
    return out


def augment(patches: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """The same random in-plane flips and 90-degree rotation for each tensor of `patches`, drawn
    per patch (the last two dimensions are Y and X)."""
    count = patches[0].shape[0]
    flips = torch.rand(count, 2, generator=generator) < 0.5
    turns = torch.randint(0, 4, (count,), generator=generator)
    out = []
    for tensor in patches:
        items = []
        for index in range(count):
            item = tensor[index]
            flipped = [dim for dim, flip in zip((-2, -1), flips[index], strict=True) if flip]
            if flipped:
                item = item.flip(flipped)
            items.append(torch.rot90(item, int(turns[index]), (-2, -1)))
        out.append(torch.stack(items))
    return out


def pixel_error(net: nn.Module, image: np.ndarray, membrane: np.ndarray, device) -> float:
    """Fraction of pixels whose thresholded prediction (p > 0.5) disagrees with the labels, the
    whole split in one pass (the U-Nets keep any size that is a multiple of 8)."""
    net.eval()
    x = to_input(torch.as_tensor(image))
    x = x[None, None] if net.dims == 3 else x[:, None]
    with torch.no_grad():
        logits = net(x.to(device)).float().cpu()
    predicted = (logits > 0).reshape(membrane.shape)
    return (predicted != torch.as_tensor(membrane, dtype=torch.bool)).float().mean().item()


def run(data: str, model: str, metrics: str, config: dict, log=print) -> dict:
    """Train per `config`; write the final weights to `model` and the run's record to `metrics`."""
    threads = provenance.set_threads()
    device, device_reason = choose_device(config)
    log(f"train: {device_reason}; {threads} CPU threads")
    torch.manual_seed(config["seed"])
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    train_volumes = load_split(data, "train")
    val_image, val_membrane = load_split(data, "val")
    net = build_model(**architecture(config)).to(device)
    on_gpu = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    steps = config["steps_per_epoch"]
    scheduler = one_cycle(optimizer, config["lr"], config["epochs"] * steps)
    criterion = nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor([config["membrane_weight"]], device=device)
    )
    shape = patch_shape(config, config["patch_size"])

    checkpoint_path = checkpoint_path_for(model)
    start_epoch, history = resume(checkpoint_path, config, net, optimizer, scheduler, log)
    started = time.perf_counter()
    for epoch in range(start_epoch, config["epochs"]):
        net.train()
        generator = epoch_generator(config["seed"], epoch)
        epoch_start, loss_sum = time.perf_counter(), 0.0
        for step in range(1, steps + 1):
            images, labels = augment(
                crops(train_volumes, config["batch_size"], shape, generator), generator
            )
            x = to_input(images).to(device, non_blocking=True)
            y = labels.float().to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                loss = criterion(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            if step % config["log_every"] == 0 or step == steps:
                rate = step / (time.perf_counter() - epoch_start)
                remaining = (config["epochs"] - epoch) * steps - step
                log(
                    f"train: epoch {epoch + 1}/{config['epochs']} step {step}/{steps} "
                    f"loss {loss_sum / step:.4f} {rate:.2f} steps/s ETA {remaining / rate:.0f} s"
                )
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / steps,
            "val_pixel_error": pixel_error(net, val_image, val_membrane, device),
            "patches_per_s": steps * config["batch_size"] / (time.perf_counter() - epoch_start),
        }
        history.append(record)
        log(
            f"train: epoch {epoch + 1} done: loss {record['train_loss']:.4f} "
            f"val pixel error {record['val_pixel_error']:.4f}"
        )
        save_checkpoint(checkpoint_path, config, net, optimizer, scheduler, epoch + 1, history)

    return save_trained(
        model,
        metrics,
        net,
        config,
        architecture=architecture(config),
        device=device,
        device_reason=device_reason,
        start_epoch=start_epoch,
        started=started,
        history=history,
        scores={"val_pixel_error": history[-1]["val_pixel_error"] if history else None},
    )


def calibration_patches(data: str, config: dict, count: int) -> torch.Tensor:
    """`count` tile-shaped patches of the training sections (never validation or test), as the
    float input the model takes: PT2E fixes the spatial shape at export, so calibration uses the
    shape the tiled inference runs."""
    generator = torch.Generator().manual_seed(config["seed"])
    (images,) = crops(
        [load_split(data, "train")[0]], count, patch_shape(config, config["tile"]), generator
    )
    return to_input(images)
