"""Progress bars (tqdm) for the steps that can take more than a few seconds: embedding a
dataset, NMI's k-means, building an index, the export's parity checks.

One rule decides whether a bar shows: when forced with `set_enabled(True)`, always; after
`set_enabled(False)` (the CLI's `--quiet`), never; otherwise only when stderr is a terminal, so
log files and pipes never fill with redrawn bars. Bars go to stderr, so `--json` output on stdout
stays one clean line, and they appear only after `DELAY` seconds: quick steps stay silent.
"""

import contextlib
import sys
import threading

# Seconds a step runs before its bar appears (tqdm's `delay`).
DELAY = 2.0

_forced = None  # None: decide from stderr; True / False: set by set_enabled


def set_enabled(enabled):
    """Forces bars on (`True`), off (`False`, as `--quiet` does) or back to automatic (`None`)."""
    global _forced
    if enabled not in (None, True, False):
        raise ValueError(f"enabled must be True, False or None. Received: {enabled!r}")
    _forced = enabled


@contextlib.contextmanager
def forced(enabled):
    """`set_enabled(enabled)` for the duration of a with block, then the previous setting."""
    previous = _forced
    set_enabled(enabled)
    try:
        yield
    finally:
        set_enabled(previous)


def enabled():
    """Whether a bar would show now: as forced, else whether stderr is a terminal."""
    if _forced is not None:
        return _forced
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(iterable=None, total=None, desc=None, unit="it"):
    """A tqdm bar on stderr, or (bars off) tqdm's silent pass-through with the same methods."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                delay=DELAY, disable=not enabled(), dynamic_ncols=True)


@contextlib.contextmanager
def working(desc):
    """An elapsed-time line for one long call that reports no steps (e.g. a k-means run)."""
    if not enabled():
        yield
        return
    line = bar(desc=desc, unit="s")
    line.bar_format = "{desc}: {elapsed}"
    done = threading.Event()

    def tick():
        while not done.wait(0.5):
            line.update(0)  # redraws once DELAY has passed, as a step would

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        line.close()
