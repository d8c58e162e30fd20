"""The client's pure parts: what to send, how to read an answer, and whether to try again.

``modal_fastapi_kit.client`` drives them over ``httpx``, once for blocking code and once for
``asyncio``; nothing here does I/O, so each decision is tested without a server.
"""
