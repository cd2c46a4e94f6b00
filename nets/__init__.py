"""The networks the teacher and training stages share: the ResNet feature extractor, the folded
image normalisation, weight loading and the device choice.

`dcam.nets.choices` is torch-free (CLI option choices); the other modules need torch.
"""
