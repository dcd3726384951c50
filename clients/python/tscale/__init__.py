"""tscale — the Python client of the tscale daemon (tscale.client, standard library only) and
the project's PyTorch modules for its ternary layers (tscale.torch_layers, needs torch)."""
from .client import (Client, FeedbackResult, IdConflict, IdExpired, InferResult, TscaleError,
                     UnknownId)

__version__ = "0.1.0"
__all__ = ["Client", "InferResult", "FeedbackResult", "TscaleError", "UnknownId", "IdExpired",
           "IdConflict"]
