"""Training: one trainer, pluggable methods (registry), demo models on the built-in data."""

from .demo import DEMO_PRESETS, demo_model
from .methods import Method, Standard, available_methods, get_method, register_method
from .trainer import Callback, TrainConfig, Trainer, TrainResult, evaluate_accuracy, train_model
from .adversarial import PGDTraining, Trades  # registers "pgd" and "trades"
from .regularizers import AverageMarginRegularizer, LipschitzRegularizer  # registers "amr" and "lcr"
from .mma import MMATraining  # registers "mma"
from .model_zoo import ZooEntry, zoo_entries
from .presets import PRESETS, Preset, get_preset, train_preset
from .dynamics import MarginTracker, estimate_margins, linear_margin_dynamics, lipschitz_margin
from .evaluation import RobustAccuracy, pgd_robust_accuracy

__all__ = [
    "MarginTracker",
    "MMATraining",
    "ZooEntry",
    "zoo_entries",
    "PRESETS",
    "Preset",
    "RobustAccuracy",
    "estimate_margins",
    "get_preset",
    "linear_margin_dynamics",
    "lipschitz_margin",
    "pgd_robust_accuracy",
    "train_preset",
    "AverageMarginRegularizer",
    "LipschitzRegularizer",
    "DEMO_PRESETS",
    "Callback",
    "Method",
    "PGDTraining",
    "Standard",
    "TrainConfig",
    "TrainResult",
    "Trades",
    "Trainer",
    "available_methods",
    "demo_model",
    "evaluate_accuracy",
    "get_method",
    "register_method",
    "train_model",
]
