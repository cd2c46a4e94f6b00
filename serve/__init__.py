"""dcam.serve: the real tritonserver from the nvidia-pytriton wheel, for machines without Docker
or a GPU (`dcam-serve`); `dcam-build verify`, the tests and the benchmarks start it too."""
