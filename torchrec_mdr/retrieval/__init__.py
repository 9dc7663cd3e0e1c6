"""The two-tower retrieval (recall-stage) form of ADIN, trained by ``mdr train`` with ``task = "retrieval"``.

* :mod:`~torchrec_mdr.retrieval.config`: the ``[retrieval]`` section of an experiment config;
* :mod:`~torchrec_mdr.retrieval.model`: the user and item towers, the in-batch sampled softmax with
  log-Q correction, and the top-level model in TrainPipelineSparseDist's shape;
* :mod:`~torchrec_mdr.retrieval.sampling`: the streaming item-frequency estimate behind log-Q;
* :mod:`~torchrec_mdr.retrieval.metrics`: Recall@K and HitRate@K, overall and per domain.

This package's ``__init__`` imports nothing, so that the experiment config can import the config
module without pulling in the models.
"""
