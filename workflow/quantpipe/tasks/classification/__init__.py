"""What image classification tasks share (cifar10, images): normalisation and augmentation,
training with cross-entropy, accuracy, the benchmark's timed test pass, and the summary with its
paired tests and the study's Table 1. A task supplies its data splits and channel statistics."""
