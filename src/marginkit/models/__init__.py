"""Demo models, the feature/head split, checkpoints and loading of user models."""

from .head import HeadSplit, list_layers, split_head, truncate
from .zoo import ARCHITECTURES, ModelSpec, build_model

__all__ = ["ARCHITECTURES", "HeadSplit", "ModelSpec", "build_model", "list_layers", "split_head", "truncate"]
