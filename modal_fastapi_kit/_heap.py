"""Keep the garbage collector off the loaded model, in processes the kit owns.

A full collection walks every tracked object while holding the GIL: with torch and
transformers loaded that is several hundred thousand objects and 100 to 250 ms in which
neither the event loop nor the model makes progress. ``gc.freeze()`` after loading moves
them to a generation no collection walks, so collections only see what requests allocate.

It is process-wide, so only code that owns the process calls it: ``mfk serve`` once the model
is ready, and the generated Modal class at the end of ``@modal.enter``. A router mounted in
someone else's app leaves their garbage collector alone.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_loaded_heap"]


def freeze_loaded_heap() -> None:
    """Exempt everything alive now (the model and its libraries) from garbage collection."""
    gc.freeze()
