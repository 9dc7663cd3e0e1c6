"""DLRM-style reference: a training program in the style of torchrec's DLRM example.

* :mod:`dlrm_style.train` — ``python -m dlrm_style.train``, the flags of torchrec's DLRM example
  mapped onto the ExperimentConfig and run by the shared Trainer. The DLRM and DLRM-DCNv2 archs it
  trains live with every other model, in :mod:`torchrec_mdr.models.dlrm` (``model.name = dlrm`` /
  ``dlrm_dcn``).
"""
