"""quantpipe: what INT8 post-training quantization buys a CNN, measured on your own machines."""
