"""Slow, literal reference implementations of the saliency methods, written from the equations."""
