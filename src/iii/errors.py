"""Errors raised by the iii SDK.

Hierarchy::

    IIIError
    ├── InvocationError            a call failed (engine or handler error, TIMEOUT, SHUTDOWN …)
    └── RegistrationRejectedError  the engine refused this worker (fatal: no reconnect)

Names, constructor arguments and ``str()`` match the official ``iii-sdk``.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["IIIError", "InvocationError", "RegistrationRejectedError", "error_from_wire"]


class IIIError(Exception):
    """Root of every error the SDK raises on purpose."""


class InvocationError(IIIError):
    """An invocation failed; ``code`` says why (``function_not_found``, ``TIMEOUT`` …).

    ``str(err)`` is ``"<code>: <message>"`` and never includes ``stacktrace``, which is the
    remote handler's traceback (it may show internal paths).
    """

    def __init__(
        self,
        code: str,
        message: str,
        function_id: Optional[str] = None,
        stacktrace: Optional[str] = None,
        invocation_id: Optional[str] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.function_id = function_id
        self.stacktrace = stacktrace
        self.invocation_id = invocation_id


class RegistrationRejectedError(IIIError):
    """The engine rejected this worker (e.g. its name is taken in the namespace)."""

    def __init__(self, code: str, namespace: str, worker_name: str, owner_worker_id: str) -> None:
        super().__init__(
            f"{code}: worker '{worker_name}' rejected in namespace "
            f"'{namespace}' (owned by '{owner_worker_id}')"
        )
        self.code = code
        self.namespace = namespace
        self.worker_name = worker_name
        self.owner_worker_id = owner_worker_id


def error_from_wire(
    error: Any, function_id: Optional[str], invocation_id: Optional[str]
) -> InvocationError:
    """An ``ErrorBody`` as received; malformed shapes become code ``UNKNOWN``."""
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        stacktrace = error.get("stacktrace")
        return InvocationError(
            code if isinstance(code, str) else "UNKNOWN",
            message if isinstance(message, str) else "<no message>",
            function_id,
            stacktrace if isinstance(stacktrace, str) else None,
            invocation_id,
        )
    return InvocationError("UNKNOWN", str(error), function_id, None, invocation_id)
