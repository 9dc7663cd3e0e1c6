"""Managed collision (MCH): low-frequency id eviction on torchrec's managed-collision modules.

**The one place to re-check on a torchrec or fbgemm upgrade.** Everything here leans on internals
of ``torchrec.modules.mc_modules.MCHManagedCollisionModule``, torchrec's sharded managed-collision
collections and fbgemm's CPU kernels, read and tested against the pinned versions of
``install/constraints-cpu.txt``: torch 2.13.0, torchrec 1.9.2 (1.8.0 also tested) and
fbgemm-gpu-cpu 1.8.0. Nothing outside this package touches those internals.

* :mod:`~torchrec_mdr.sparse.mch.config` — ``EvictionConfig`` (the ``[sparse.eviction]`` section).
* :mod:`~torchrec_mdr.sparse.mch.eviction` — the eviction policies, ``TrackedMCHModule`` (overrides
  the private ``_update_and_evict`` and reads ``_mch_sorted_raw_ids`` / ``_mch_remapped_ids_mapping``),
  the managed collections of the sparse arch, config checks, the reader's id ranges, statistics.
* :mod:`~torchrec_mdr.sparse.mch.state` — the history collected between eviction rounds, which
  torchrec's state dict leaves out (private ``_history_*`` / ``_current_iter`` attributes).
* :mod:`~torchrec_mdr.sparse.mch.reshard` — loading a checkpoint's managed tables at another world
  size (torchrec's row-wise slot layout; ``CHECKED_TORCHREC``).
* :mod:`~torchrec_mdr.sparse.mch.fbgemm_cpu_fallback` — a CPU kernel for
  ``fbgemm::reset_weight_momentum``, registered only where fbgemm lacks one (``FBGEMM_VERSION``).

Each module checks what it relies on and raises or warns rather than guess when the layout
differs; the tests in ``tests/test_eviction.py`` and ``tests/test_checkpoint.py`` are the ones to
run after an upgrade.
"""
