"""Jobs: work submitted now and collected later, past Modal's 150-second web limit.

- ``options``: ``JobOptions``, what ``@gpu_service(jobs=...)`` records;
- ``status``: the states and the status document a client reads (no web stack: the client
  imports it);
- ``progress``: what ``ModelServer.progress`` reports to, and how a canceled job stops;
- ``service``: the ``JobService`` protocol the routes call, and a submission;
- ``sqlite`` / ``local``: the store and runner behind ``mfk serve`` and a mounted router;
- ``modal``: the store and runner on Modal (``FunctionCall`` and a ``modal.Dict``);
- ``webhooks``: signing and delivering the call that tells a receiver a job ended.
"""
