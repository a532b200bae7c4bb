"""What one run of a task produced, whatever happened to it."""
from __future__ import annotations

from ..errors import WasmyardError
from .host import Sink

__all__ = ["Outcome"]


class Outcome:
    """Output, logs and exit status of one execution; ``error`` is None on success.

    An Outcome is returned, never raised: a task's failure is a normal result
    for the coordinator, which records it and serves the next request.
    """

    __slots__ = ("output", "error", "exit_code", "sink", "run_s")

    def __init__(
        self,
        output: bytes = b"",
        error: WasmyardError | None = None,
        sink: Sink | None = None,
        exit_code: int | None = None,
    ) -> None:
        self.output = output
        self.error = error
        self.sink = sink if sink is not None else Sink()  # logs and published events
        self.exit_code = exit_code
        self.run_s = 0.0  # time inside the environment, without queueing or thread hops

    @property
    def logs(self) -> list[tuple[str, str]]:
        return self.sink.logs

    @property
    def ok(self) -> bool:
        return self.error is None
