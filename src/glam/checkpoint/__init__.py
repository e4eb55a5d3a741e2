"""Checkpoints of a run directory (Orbax), and loading a trained model for inference."""

from glam.checkpoint.inference import load_for_inference
from glam.checkpoint.manager import Checkpointer, prepare_run_dir, read_config

__all__ = ["Checkpointer", "load_for_inference", "prepare_run_dir", "read_config"]
