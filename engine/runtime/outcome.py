"""What one run of a task produced, whatever happened to it."""
from __future__ import annotations

from ..errors import WasmyardError

__all__ = ["Outcome"]


class Outcome:
    """Output, logs and exit status of one execution; ``error`` is None on success.

    An Outcome is returned, never raised: a task's failure is a normal result
    for the coordinator, which records it and serves the next request.
    """

    __slots__ = ("output", "error", "logs", "exit_code", "dropped_logs", "run_s")

    def __init__(
        self,
        output: bytes = b"",
        error: WasmyardError | None = None,
        logs: list[tuple[str, str]] | None = None,
        exit_code: int | None = None,
        dropped_logs: int = 0,
    ) -> None:
        self.output = output
        self.error = error
        self.logs = logs if logs is not None else []
        self.exit_code = exit_code
        self.dropped_logs = dropped_logs
        self.run_s = 0.0  # time inside the environment, without queueing or thread hops

    @property
    def ok(self) -> bool:
        return self.error is None
