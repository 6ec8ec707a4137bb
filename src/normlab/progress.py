"""Progress of a long loop (the lab's runs, style transfer's steps, the zoo benchmark's models).

On a terminal it is a tqdm bar, redrawn in place; anywhere else (a log file, a pipe, CI) it is
one plain line per 10% of the work, so a log does not fill with carriage returns. Each item
done may weigh differently (``cost``): the percentage and the ETA follow the cost, the count
follows the items. Imports nothing from normlab, so any layer may use it.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]

_FORMAT = "{percentage:3.0f}% |{bar}| {desc}  {elapsed} elapsed  ETA {remaining}"


class Progress:
    """``update(cost)`` after each of ``n_items`` items whose costs sum to ``total_cost``.

    ``stream`` (default stderr) receives the bar; ``enabled=False`` (``--no-progress``), or no
    items, writes nothing. ``log(text)`` prints a line above the bar (or plainly)."""

    def __init__(self, total_cost: float, n_items: int, stream=None, enabled: bool = True,
                 unit: str = "runs"):
        self.total, self.n, self.done_cost, self.done = float(total_cost), n_items, 0.0, 0
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and n_items > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_decile = -1
        self._bar = None
        if self.enabled and self.tty:
            import shutil

            from tqdm import tqdm

            # the size from shutil, which falls back to 80 x 24 where the terminal reports none
            # (a pty with no size: tqdm's own reading gives 0 rows and it draws nothing)
            size = shutil.get_terminal_size((80, 24))
            self._bar = tqdm(total=self.total or 1.0, file=self.stream, bar_format=_FORMAT,
                             ncols=min(100, size.columns), nrows=max(2, size.lines),
                             leave=True, desc=self._count())

    def _count(self) -> str:
        return f"{self.done}/{self.n} {self.unit}"

    def update(self, cost: float = 1.0) -> None:
        self.done += 1
        self.done_cost += cost
        if not self.enabled:
            return
        if self.tty:
            if self._bar is not None:
                self._bar.set_description_str(self._count(), refresh=False)
                self._bar.update(cost if self.total else 0.0)
                if self.done >= self.n:
                    self.close()
            return
        frac = min(1.0, self.done_cost / self.total) if self.total else 1.0
        if int(frac * 10) > self.last_decile or self.done == self.n:
            self.last_decile = int(frac * 10)
            from tqdm import tqdm

            line = tqdm.format_meter(frac, 1.0, time.perf_counter() - self.t0, ncols=80,
                                     bar_format=_FORMAT, prefix=self._count(), ascii=True)
            self.stream.write(line + "\n")
            self.stream.flush()

    def log(self, text: str) -> None:
        """A line of text that does not break the bar (printed above it on a terminal)."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar (the last state stays on screen); called when the last item is done."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
