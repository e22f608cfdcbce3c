"""The course's exercises: in each notebook, two to four pieces of the lesson for the learner to write.

An exercise cell holds a stub (the signature, a docstring with shapes in the seed's notation, and ``raise
NotImplementedError``) and one call of :func:`check`, which tries the learner's function on random and edge-case
inputs against the package and, when something is wrong, says what (a shape, a term, a t) without giving the answer::

    from tinyldm.exercises import check, hint, progress

    check("02.q_sample", q_sample)   # ✓ or ✗ with a diagnosis, or "not attempted yet"
    hint("02.q_sample")              # a nudge; hint("02.q_sample", 2) a stronger one
    progress()                       # which exercises of the course pass

Exercises are named "NN.function" after their notebook. Reference solutions are kept apart, in the repository's
``solutions/`` folder (one file per notebook); :mod:`tinyldm.exercises.notebooks` fills them into copies of the
notebooks, or puts the stubs back (``tinyldm exercises solve`` / ``tinyldm exercises reset``).
"""

from . import attention, finetuning, guidance, latents, noising, sampling, training  # noqa: F401  (they register)
from .core import EXERCISES, Case, Exercise, Mistake, Result, check, exercise, hint, progress

__all__ = ["check", "hint", "progress", "exercise", "EXERCISES", "Exercise", "Case", "Mistake", "Result"]
