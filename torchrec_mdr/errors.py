"""Errors of the training side (bad data raises :class:`torchrec_mdr.data.errors.DataError`)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a checkpoint that does not fit...); the message says why."""
