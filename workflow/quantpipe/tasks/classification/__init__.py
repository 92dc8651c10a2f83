"""What the image classification tasks share (cifar10, and later images): the summary's tables
(`summary`: accuracy over seeds, McNemar's paired test, the study's Table 1) and its figures
(`figures`)."""
