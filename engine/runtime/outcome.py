"""What one run of a task produced, whatever happened to it."""
from __future__ import annotations

from typing import Sequence

from ..errors import WasmyardError
from .host import Sink

__all__ = ["Outcome"]

_NOTHING: tuple[()] = ()


class Outcome:
    """Output, logs and exit status of one execution; ``error`` is None on success.

    An Outcome is returned, never raised: a task's failure is a normal result
    for the coordinator, which records it and serves the next request.
    ``sink`` is None for a run whose module imports no host functions: it
    cannot have logged or published anything, and not making a Sink for it
    is one allocation less on the hot path.
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
        self.sink = sink
        self.exit_code = exit_code
        self.run_s = 0.0  # time inside the environment, without queueing or thread hops (0: not measured)

    @property
    def logs(self) -> Sequence[tuple[str, str]]:
        sink = self.sink
        return sink.logs if sink is not None and sink.logs else _NOTHING

    @property
    def published(self) -> Sequence[tuple[str, bytes]]:
        sink = self.sink
        return sink.published if sink is not None else _NOTHING

    @property
    def ok(self) -> bool:
        return self.error is None
