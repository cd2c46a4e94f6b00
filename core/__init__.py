"""dcam.core: what every stage shares, without torch.

The error family, tensor names, the versioned manifest, the scoring rule (anomaly map -> image
score -> normalised score -> decision), image decoding, metrics and atomic writes. The Triton
models get copies of `anomaly_map.py`, `scoring.py` and `batching.py` at build time, so those
three import nothing else from dcam.
"""
