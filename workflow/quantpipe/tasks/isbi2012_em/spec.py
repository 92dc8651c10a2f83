"""Task isbi2012_em's torch-free facts (quantpipe.tasks.base.TaskSpec): membrane prediction on
the ISBI 2012 serial-section EM stack, its settings in the config's `em` section."""

from quantpipe.tasks.base import TaskSpec

POOLING = 8  # quantpipe.models.unet.MIN_SIZE: in-plane sizes must be multiples of it
# The `em` keys each stage reads, and the keys of the stage's own config section that still
# apply (the rest of train, quantize, benchmark is the classification recipe). Validation: what
# the validator adds for accuracy control (the sensitivity stage, the budgeted quantize), the
# tiled path's geometry.
EM_KEYS = {
    "train": ("sections", "patch_size", "epochs", "steps_per_epoch", "batch_size", "lr",
              "weight_decay", "membrane_weight"),
    "quantize": ("tile_sections", "tile"),
    "validation": ("tile_sections", "tile", "overlap", "section_overlap", "block_tiles",
                   "inference_batch_size"),
    "benchmark": ("tile_sections", "tile", "overlap", "section_overlap", "block_tiles",
                  "inference_batch_size", "threshold"),
}  # fmt: skip
SHARED_KEYS = {
    "train": ("device", "log_every"),
    "quantize": ("calibration_batch_size",),
    "validation": (),
    "benchmark": ("gpu", "rounds", "share_seconds"),
}


def _settings(stage: str):
    def settings(config: dict) -> dict:
        return {
            **{key: config[stage][key] for key in SHARED_KEYS[stage]},
            **{key: config["em"][key] for key in EM_KEYS[stage]},
        }

    return settings


def tiling_geometry(config: dict) -> dict:
    """quantpipe.tiling.predict_volume's geometry for this model: tiles, overlaps and the blocks
    (output chunks) of whole sections, each `block_tiles` tiles deep. A tile wide enough for a
    section plus its halo (em.tile = 512 + em.overlap for the ISBI sections) computes each voxel
    about once in-plane. unet2d: one section per tile, so `block_tiles` sections per block;
    unet3d_aniso: tiles of `tile_sections` sections overlapping by `section_overlap`, the block as
    deep as `block_tiles` such tiles cover once the block's halo is taken off (with no section
    overlap, no halo: each voxel is computed once in depth)."""
    tiles = config["block_tiles"]
    if config["model"] == "unet3d_aniso":
        depth, overlap = config["tile_sections"], config["section_overlap"]
        halo = -(-overlap // 2)
        return {
            "dims": 3,
            "tile": (depth, config["tile"], config["tile"]),
            "overlap": (overlap, config["overlap"], config["overlap"]),
            "block_sections": max(1, tiles * (depth - overlap) + overlap - 2 * halo),
        }
    return {
        "dims": 2,
        "tile": (config["tile"], config["tile"]),
        "overlap": (config["overlap"], config["overlap"]),
        "block_sections": tiles,
    }


def segment_settings(config: dict, model: str) -> dict:
    """The segment stage's config for `model`: the benchmark's tiling, on the CPU."""
    em = config["em"]
    geometry = tiling_geometry(
        {"model": model}
        | {
            key: em[key]
            for key in ("tile_sections", "tile", "overlap", "section_overlap", "block_tiles")
        }
    )
    return {
        **{
            key: list(value) if isinstance(value, tuple) else value
            for key, value in geometry.items()
        },
        "batch_size": em["inference_batch_size"],
        "device": "cpu",
    }


def check(config: dict) -> None:
    em = config["em"]
    for key in ("patch_size", "tile"):
        if em[key] % POOLING:
            raise ValueError(
                f"em.{key} = {em[key]} must be a multiple of {POOLING} (the U-Nets pool "
                "three times)"
            )
    if em["overlap"] >= em["tile"]:
        raise ValueError(
            f"em.overlap = {em['overlap']} must be smaller than em.tile = {em['tile']}"
        )
    curve = config.get("benchmark", {}).get("batch_sizes", [])
    if curve:
        raise ValueError(
            f"benchmark.batch_sizes {curve}: the batch-size curve is for the classifier tasks; "
            "this task's batch is em.inference_batch_size (tiles per forward pass). Drop "
            "batch_sizes, or set it to []"
        )
    normalised = [model for model, entry in config.get("weights", {}).items() if "mean" in entry]
    if normalised:
        raise ValueError(
            f"weights of {normalised}: this task takes no mean or std, its inputs are pixels/255 "
            "and nothing else. Drop them from the entries"
        )
    if "unet3d_aniso" in config["models"] and em["section_overlap"] >= em["tile_sections"]:
        raise ValueError(
            f"em.section_overlap = {em['section_overlap']} must be smaller than "
            f"em.tile_sections = {em['tile_sections']}"
        )


SPEC = TaskSpec(
    name="isbi2012_em",
    data="resources/isbi2012_em.zarr",
    implementation="quantpipe.tasks.isbi2012_em.task:Isbi2012Em",
    models=("unet2d", "unet3d_aniso"),
    methods=("pt2e", "eager"),
    segment_settings=segment_settings,
    figures=("quality_vs_throughput", "cost_per_mm3"),
    data_keys=("isbi2012_copy", "isbi2012_url", "allow_download"),
    settings={stage: _settings(stage) for stage in EM_KEYS},
    report_columns=(
        "pixel_error",
        "v_rand",
        "v_info",
        "voxels_per_s",
        "voxels_per_s_spread",
        "rounds",
        "paired_speedup",
        "paired_speedup_spread",
        "reference_voxels_per_s",
        "network_voxels_per_s",
        "path_fraction_of_network",
        "share_rounds",
        "job_hours_per_mm3",
        "tile",
        "overlap",
        "block_sections",
        "redundancy",
    ),  # fmt: skip
    quality=("pixel_error", "v_rand", "v_info"),
    rate="voxels_per_s",
    validation_score="val_pixel_error",
    validation_higher_is_better=False,
    check=check,
)
