"""lift-dist: LIFT / LIFT+ lightweight fine-tuning of CLIP for long-tail classification, distributed."""

__version__ = "0.1.0"
