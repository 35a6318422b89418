"""Data preparation: ImageNet-format sources to memory-mapped arrays (``preprocess.py`` is its
command line), image decoding and resizing, and the Dataset over the arrays."""
