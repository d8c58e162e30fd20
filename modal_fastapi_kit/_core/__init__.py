"""What runs the model, the same in every process: the local server, the split topology's GPU
class and the colocated container.

- ``spec``: what a decorated class declares (models, config, which predict hook and its kind).
- ``thread``: the one inference thread sync hooks run on.
- ``state``: ``LoadState``, where a runtime or a backend is in its life.
- ``runtime``: ``ModelRuntime``, the one place the user's hooks are called; it composes:
  ``outcomes`` (results checked and coerced, one per item), ``isolation`` (finding the
  failing items of a batch that raised), ``memory`` (out-of-memory errors and the batch
  cap), ``pump`` (generator output to item streams) and ``watchdog`` (a stuck model call).
- ``streams``: ``ItemStream``, one request's chunks from a generator predict.
- ``batcher``: the dynamic batcher in front of the runtime.
- ``wire``: the JSON envelopes the web tier and the GPU tier exchange on Modal.

Nothing here imports FastAPI, Modal or ``ModelServer``: arrows point down into this package.
"""
