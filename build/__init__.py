"""dcam.build: turns a training run (weights + manifest.json) into a Triton model repository.

Not implemented yet (issue 3).
"""
