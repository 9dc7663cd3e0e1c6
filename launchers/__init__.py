"""torchx components for torchrec-mdr (``launchers/components.py:train``); see launchers/README.md."""
