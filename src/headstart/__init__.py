"""headstart: pretraining strategies and transfer learning on PyTorch, timm and Lightning."""

from headstart.errors import HeadstartError

__version__ = "0.1.0"
__all__ = ["HeadstartError", "__version__"]
