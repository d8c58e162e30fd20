"""The Modal deployment of a ``@gpu_service`` class, in two rooms:

- ``build``: what ``X.modal_app()`` makes on the machine that deploys (and again when a
  container imports the user's module): the Image, the App, the GPU class's options and the
  Modal-marked methods set on the class, the split topology's web function.
- ``container``: what those methods do inside a container: one ``ModelRuntime`` per
  container instance, loaded in ``@modal.enter``, unloaded in ``@modal.exit``, answering
  batches, streams and (colocated) the whole router.

Only these modules import ``modal`` at import time; ``X.modal_app()`` imports them.
"""

from .build import ModalDeployment, credentials_configured, deployment

__all__ = ["ModalDeployment", "credentials_configured", "deployment"]
