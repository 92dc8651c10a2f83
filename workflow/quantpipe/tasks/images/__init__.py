"""Image classification of a user's own folder of labelled images (torchvision's ImageFolder
layout): decoded once into a verified cache on disk that every stage reads batch by batch.
`spec` holds the Snakefile's facts, `task` the implementation."""
