"""The iii engine: the routing core (:mod:`.router`) and the WebSocket server around it."""

__all__: list[str] = []
