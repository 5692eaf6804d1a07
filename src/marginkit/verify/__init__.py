"""Certified lower bounds and exact input margins for feed-forward ReLU networks."""

from __future__ import annotations

from .network import Affine, ReluNetwork, UnsupportedLayerError, as_relu_network

__all__ = ["Affine", "ReluNetwork", "UnsupportedLayerError", "as_relu_network"]
