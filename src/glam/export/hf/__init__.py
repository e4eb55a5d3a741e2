"""The PyTorch files ``glam export`` copies beside the weights (``configuration_glam.py``,
``modeling_glam.py``): self-contained, they import torch and transformers, never glam."""
