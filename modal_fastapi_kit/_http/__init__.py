"""What faces the client: the router and its routes, streamed answers, the error contract,
readiness across services, and the origin lock for a custom-domain edge.
"""
