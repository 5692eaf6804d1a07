"""Demo models, the feature/head split, checkpoints, loading and validation of user models."""

from .checkpoint import (Checkpoint, ExportedModel, SelectLogits, load_checkpoint, load_model, load_torch_file,
                         model_fingerprint, save_checkpoint)
from .head import HeadSplit, feature_margin_unavailable, head_split_or_reason, list_layers, split_head, truncate
from .validate import ModelCheck, validate_model, validate_model_for_dataset
from .zoo import ARCHITECTURES, ModelSpec, build_model

__all__ = ["ARCHITECTURES", "Checkpoint", "ExportedModel", "HeadSplit", "ModelCheck", "ModelSpec", "SelectLogits",
           "build_model", "feature_margin_unavailable", "head_split_or_reason", "list_layers", "load_checkpoint",
           "load_model", "load_torch_file", "model_fingerprint", "save_checkpoint", "split_head", "truncate",
           "validate_model", "validate_model_for_dataset"]
