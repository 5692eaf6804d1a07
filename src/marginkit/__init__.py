"""marginkit: how close is each decision of a PyTorch classifier to flipping."""

from importlib.metadata import PackageNotFoundError, version

from .norms import Norm, as_norm, batch_norm, dual

try:
    __version__ = version("marginkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["Norm", "__version__", "as_norm", "batch_norm", "dual"]
