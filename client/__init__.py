"""dcam.client: pushes production-line images through Triton; never imports torch.

Not implemented yet (issue 4).
"""
