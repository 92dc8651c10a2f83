"""Networks: the built-in ResNet18s (resnet) and U-Nets (unet), models by reference
(references), and `build.build_model` for all of them. Importing this package imports no torch:
the Snakefile reads references' names and folders."""
