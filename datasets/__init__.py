"""dcam.datasets: where images come from. The MVTec AD and plain-folder layouts training reads,
and the synthetic production line (`dcam-data synth`) that demos, tests and benchmarks use.
Torch-free."""
