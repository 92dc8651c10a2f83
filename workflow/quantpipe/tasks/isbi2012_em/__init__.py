"""Connectomics: membrane segmentation of serial-section electron microscopy (the ISBI 2012 stack).

`data` verifies the 30 labelled slices and writes them as one Zarr volume split by slice into
train, validation and test; `metrics` scores a membrane probability map with the challenge's pixel
error and foreground-restricted Rand and information scores; `tiling` runs a model over a chunked
Zarr volume larger than memory in overlapping, blended tiles, block by block, so that a Slurm job
array can write one output; `unet` holds the 2D and anisotropic 3D U-Nets.
"""
