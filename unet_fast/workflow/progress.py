"""Progress of long commands on stderr: a tqdm bar on a terminal, occasional plain lines elsewhere.

A bar redraws itself with carriage returns; a pipe or a log file keeps every redraw, so a long
run's log fills with them. Where stderr is not a terminal, a line every LINE_SECONDS says the
same thing once. `train`, `demo` and `bench` share this.
"""
import sys
import time

# Seconds between two plain progress lines (none before the first has passed).
LINE_SECONDS = 30.0


def progress(iterable=None, *, enabled=None, total=None, desc="", unit="it", **tqdm_options):
    """An iterable / counter with tqdm's interface: a bar when `enabled` is True, or when it is
    None and stderr is a terminal; plain lines when None and stderr is not one; nothing when False."""
    if enabled is None:
        enabled = _stderr_is_terminal()
        if not enabled:
            return PlainProgress(iterable, total=total, desc=desc, unit=unit)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                **tqdm_options)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


class PlainProgress:
    """`DESC: N/TOTAL UNIT (postfix)` on stderr, at most once per LINE_SECONDS; no redraws."""

    def __init__(self, iterable=None, total=None, desc="", unit="it"):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self._last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= LINE_SECONDS:
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            extra = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc}: {self.n}{of} {self.unit}{extra}", file=sys.stderr, flush=True)

    def set_postfix(self, refresh=True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text="", refresh=True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass
