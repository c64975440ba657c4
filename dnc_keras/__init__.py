"""Divide-and-conquer deep metric learning for Keras 3 (Sanakoyeu et al., CVPR 2019 / TPAMI 2021)."""

__version__ = "0.1.0"
