"""DLRM-style reference: DLRM and DLRM-DCNv2 on torchrec-mdr's sparse arch and data path.

* :mod:`dlrm_style.models` — the dense archs, registered as ``model.name = dlrm`` / ``dlrm_dcn``.
* :mod:`dlrm_style.train` — ``python -m dlrm_style.train``, the flags of torchrec's DLRM example
  mapped onto the ExperimentConfig and run by the shared Trainer.
"""
