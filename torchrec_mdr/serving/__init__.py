"""Serving: exported inference artifacts of trained ranking runs.

:mod:`torchrec_mdr.serving.export` writes them (``mdr export``; needs the training stack);
:mod:`torchrec_mdr.serving.artifact` loads them with torch and numpy only and scores raw feature
columns (:func:`load_artifact`).
"""

from torchrec_mdr.serving.artifact import ArtifactError, ServingModel, load_artifact

__all__ = ["ArtifactError", "ServingModel", "load_artifact"]
