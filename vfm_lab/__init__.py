"""vfm_lab: how vision foundation models are pre-trained, in small runnable pieces."""
__version__ = "0.1.0"
