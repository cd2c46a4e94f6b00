"""dcam.teacher: the license-clean teacher. Formula-generated fractal images (FractalDB style),
pretraining a ResNet to classify them (`dcam-teacher pretrain`), and the shipped weights that
`dcam-train --teacher fractal` uses. No photograph is involved."""
