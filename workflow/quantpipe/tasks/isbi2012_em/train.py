"""Training a membrane U-Net on the ISBI 2012 training sections (quantpipe.engine runs it).

Patches are random crops of the 20 training sections with random flips and 90-degree rotations,
2D for `unet2d`, stacks of `sections` sections for `unet3d_aniso`; pixels are uint8/255, nothing
else, exactly what the tiled inference feeds. Loss: binary cross-entropy on membrane logits
(membrane pixels optionally up-weighted); AdamW with a one-cycle schedule. An epoch is
`steps_per_epoch` steps; after each, the pixel error on the 5 validation sections is recorded.
"""

import numpy as np
import torch
from torch import nn

from quantpipe.engine import Training
from quantpipe.tasks.isbi2012_em.data import load_split


def patch_shape(config: dict) -> tuple[int, ...]:
    """A training patch's (Y, X) for unet2d, (Z, Y, X) for unet3d_aniso."""
    edge = config["patch_size"]
    return (config["sections"], edge, edge) if config["model"] == "unet3d_aniso" else (edge, edge)


def tile_shape(config: dict) -> tuple[int, ...]:
    """An inference (and calibration) tile's (Y, X) for unet2d, (Z, Y, X) for unet3d_aniso."""
    edge = config["tile"]
    if config["model"] == "unet3d_aniso":
        return (config["tile_sections"], edge, edge)
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


def training(data: str, config: dict, net: nn.Module, device) -> Training:
    """AdamW on `steps_per_epoch` batches of random augmented crops of the training sections per
    epoch; binary cross-entropy on membrane logits; the validation sections' pixel error."""
    train_volumes = load_split(data, "train")
    val_image, val_membrane = load_split(data, "val")
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    criterion = nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor([config["membrane_weight"]], device=device)
    )
    shape = patch_shape(config)
    steps, batch_size = config["steps_per_epoch"], config["batch_size"]

    def epoch(generator):
        for _ in range(steps):
            images, labels = augment(crops(train_volumes, batch_size, shape, generator), generator)
            yield to_input(images), labels.float()

    def validate(model, device) -> dict:
        return {"val_pixel_error": pixel_error(model, val_image, val_membrane, device)}

    return Training(
        optimizer=optimizer,
        steps_per_epoch=steps,
        items_per_epoch=steps * batch_size,
        batches=epoch,
        loss=lambda logits, targets: criterion(logits.float(), targets),
        validate=validate,
        scores=("val_pixel_error",),
        unit="patches",
    )


def calibration_patches(data: str, config: dict, count: int) -> torch.Tensor:
    """`count` tile-shaped patches of the training sections (never validation or test), as the
    float input the model takes: PT2E fixes the spatial shape at export, so calibration uses the
    shape the tiled inference runs. A tile larger than a section (it covers the section and its
    halo) is cut from the sections mirrored at their edges, as the tiled inference reads them."""
    generator = torch.Generator().manual_seed(config["seed"])
    sections = load_split(data, "train")[0]
    short = [max(0, config["tile"] - extent) for extent in sections.shape[1:]]
    sections = np.pad(
        sections, [(0, 0)] + [(need // 2, need - need // 2) for need in short], mode="symmetric"
    )
    (images,) = crops([sections], count, tile_shape(config), generator)
    return to_input(images)
