"""One progress bar over a whole study (every run, every epoch), on stderr."""

import sys
import time

import keras


def _clock(seconds):
    seconds = int(round(max(0.0, seconds)))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes:02d}:{seconds:02d}"


class StudyProgress:
    """Counts epochs over all runs of a study and draws one line for them.

    `total` is the number of epochs the whole study may train. A run that
    stops early (early stopping) counts its remaining epochs as done when
    it ends, so the ETA (elapsed time per epoch so far, times the epochs
    left) never waits for epochs that will not run. On a terminal the line
    is redrawn in place; elsewhere (a log file, a CI job) one line is
    written when each run ends.
    """

    width = 24

    def __init__(self, total, stream=None, enabled=True):
        self.total = max(1, int(total))
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.done = 0
        self.start = None
        self.title = ""
        self.run_epochs = 0
        self.run_done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def begin_run(self, title, epochs):
        if self.start is None:
            self.start = time.perf_counter()
        self.title = title
        self.run_epochs = int(epochs)
        self.run_done = 0
        if self._tty:
            self._draw()

    def epoch(self):
        self.run_done += 1
        self.done += 1
        if self._tty:
            self._draw()

    def end_run(self):
        self.done += self.run_epochs - self.run_done
        self.run_done = self.run_epochs
        self._draw(final=not self._tty)

    def close(self):
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self):
        """The progress line, as drawn: bar, counts, run title, times."""
        elapsed = time.perf_counter() - (self.start or time.perf_counter())
        share = min(1.0, self.done / self.total)
        filled = int(round(share * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0
        eta_text = _clock(eta) if self.done else "--:--"
        return (
            f"[{bar}] {share:4.0%} {self.title} epoch "
            f"{self.run_done}/{self.run_epochs} | {_clock(elapsed)} elapsed,"
            f" ETA {eta_text}"
        )

    def _draw(self, final=False):
        if not self.enabled:
            return
        text = self.line()
        if final:
            self.stream.write(text + "\n")
        else:
            self.stream.write("\r" + text.ljust(100)[:100])
        self.stream.flush()

    def callback(self):
        """A Keras callback advancing this bar once per epoch of a `fit`."""
        return _EpochCallback(self)


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, progress):
        super().__init__()
        self.progress = progress

    def on_epoch_end(self, epoch, logs=None):
        self.progress.epoch()
