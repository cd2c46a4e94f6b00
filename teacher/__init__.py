"""dcam.teacher: the license-clean teachers. Formula-generated images (IFS fractals, dead leaves,
spectral noise), pretraining a ResNet to classify them (`dcam-teacher pretrain`), the probe that
judges a teacher (`dcam-teacher probe`), the shipped weights that `dcam-train --teacher
formula` (and `fractal`) use, and loading any teacher source (sources.py, `auto` included). No
photograph is involved in the shipped ones."""
