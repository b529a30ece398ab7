"""A suite's record: measured rows, and what was skipped with the reason (a failure never stops the run)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    from benchmarks import torch_baselines

    TORCH_MISSING = None
except ImportError as error:  # torch is optional: its rows become recorded skips
    torch_baselines, TORCH_MISSING = None, f"torch is not importable ({error})"


@dataclass
class SuiteRecord:
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"name": name, "reason": reason})

    def attempt(self, name: str, measure: Callable[[], dict], **fields) -> dict | None:
        """Append `{name, **fields, **measure()}` as a row; on an exception, record a skip instead."""
        row = self.guarded(name, lambda: {"name": name, **fields, **measure()})
        if row is not None:
            self.rows.append(row)
        return row

    def guarded(self, name: str, action: Callable[[], Any]) -> Any:
        """`action()`, or None and a recorded skip with the reason if it raises."""
        try:
            return action()
        except Exception as error:  # a baseline that fails to build (e.g. torch.compile) is a result too
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.skip(name, f"failed: {type(error).__name__}: {message}"[:300])
            return None

    def warmed(self, name: str, make_timer: Callable[[], Any]) -> Any:
        """`make_timer().warm_up()`, or None and a recorded skip if building or warming it up raises."""
        return self.guarded(name, lambda: make_timer().warm_up())

    def needs_torch(self, name: str) -> bool:
        """True if torch is there; else records the skip."""
        if torch_baselines is None:
            self.skip(name, TORCH_MISSING)
        return torch_baselines is not None

    def as_dict(self, **extra) -> dict:
        return {"rows": self.rows, "skipped": self.skipped, **extra}
