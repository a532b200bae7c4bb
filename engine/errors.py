"""One exception hierarchy for the whole coordinator.

Every error says whose fault it is — the caller's request, the task's code, or
the hub itself — and carries a stable machine-readable ``code``.  The HTTP
interface maps an error to a status in exactly one place (``http_status``), so
a handler never chooses a status code by hand.
"""
from __future__ import annotations

__all__ = [
    "WasmyardError",
    "RequestError",
    "BadRequest",
    "InvalidManifest",
    "InvalidModule",
    "PayloadTooLarge",
    "NotFound",
    "UnknownTask",
    "UnknownExecution",
    "Conflict",
    "NotFinished",
    "IllegalTransition",
    "Overloaded",
    "QueueFull",
    "ShuttingDown",
    "TaskFault",
    "TaskTrapped",
    "TaskTimedOut",
    "MemoryLimitExceeded",
    "FuelExhausted",
    "OutputTooLarge",
    "GuestError",
    "TaskExited",
    "ExecutionCancelled",
    "HostError",
    "http_status",
]


class WasmyardError(Exception):
    """Root of every error the coordinator raises on purpose."""

    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


# -- the caller's fault -------------------------------------------------------


class RequestError(WasmyardError):
    """The request was wrong; retrying it unchanged will fail again."""

    code = "bad_request"
    status = 400


class BadRequest(RequestError):
    pass


class InvalidManifest(RequestError):
    code = "invalid_manifest"


class InvalidModule(RequestError):
    """The bytes are not a valid module, or not one of the declared task kind."""

    code = "invalid_module"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    status = 413


class NotFound(RequestError):
    code = "not_found"
    status = 404


class UnknownTask(NotFound):
    code = "unknown_task"

    def __init__(self, name: str) -> None:
        super().__init__(f"no task named {name!r} is registered")
        self.name = name


class UnknownExecution(NotFound):
    code = "unknown_execution"

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution {execution_id!r} (unknown, or expired from history)")


class Conflict(RequestError):
    code = "conflict"
    status = 409


class NotFinished(Conflict):
    code = "not_finished"


class IllegalTransition(Conflict):
    """A state machine was asked to make a move its table does not allow."""

    code = "illegal_transition"


class Overloaded(WasmyardError):
    """The hub is busy; the same request may succeed later (``retry_after`` s)."""

    code = "overloaded"
    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Overloaded):
    code = "queue_full"


class ShuttingDown(Overloaded):
    """The hub is stopping: it finishes what it accepted and takes nothing new."""

    code = "shutting_down"
    status = 503


# -- the task's fault ---------------------------------------------------------


class TaskFault(WasmyardError):
    """The task's own code failed; the hub is fine and serves the next request."""

    code = "task_failed"
    status = 502


class TaskTrapped(TaskFault):
    code = "trap"


class TaskTimedOut(TaskFault):
    code = "timed_out"
    status = 504


class MemoryLimitExceeded(TaskFault):
    code = "memory_limit"


class FuelExhausted(TaskFault):
    code = "fuel_exhausted"


class OutputTooLarge(TaskFault):
    code = "output_too_large"


class GuestError(TaskFault):
    """A handler returned an error through the ABI (its own, reported failure)."""

    code = "guest_error"


class TaskExited(TaskFault):
    """A command exited with a non-zero status."""

    code = "exit_status"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ExecutionCancelled(WasmyardError):
    code = "cancelled"
    status = 409


# -- the hub's fault ----------------------------------------------------------


class HostError(WasmyardError):
    """The coordinator itself failed (I/O, a bug); not the caller's nor the task's doing."""

    code = "host_error"
    status = 500


def http_status(exc: BaseException) -> int:
    """The one place an exception becomes an HTTP status."""
    if isinstance(exc, WasmyardError):
        return exc.status
    return 500
