"""torchrec-mdr: multi-domain ranking on TorchRec."""

__version__ = "0.1.0"
