"""What runs the model, the same in every process: the local server, the split topology's GPU
class and the colocated container.

- ``spec``: what a decorated class declares (models, config, which predict hook and its kind).
- ``thread``: the one inference thread sync hooks run on.
- ``hooks``: ``ModelRuntime`` calls the user's hooks, checks and coerces results, isolates
  failing items and watches for a stuck model.
- ``streams``: ``ItemStream``, one request's chunks from a generator predict.
- ``batcher``: the dynamic batcher in front of the runtime.
- ``wire``: the JSON envelopes the web tier and the GPU tier exchange on Modal.

Nothing here imports FastAPI, Modal or ``ModelServer``: arrows point down into this package.
"""
