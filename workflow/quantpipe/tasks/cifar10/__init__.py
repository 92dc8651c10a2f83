"""Image classification of CIFAR-10 (the study's task): ResNet18s or a user's network, accuracy
and images/s. `spec` holds the Snakefile's facts, `task` the implementation."""
