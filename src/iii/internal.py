"""Internal types of the official ``iii.internal``: the HTTP request a handler is sent."""

from iii.channels import InternalHttpRequest

__all__ = ["InternalHttpRequest"]
