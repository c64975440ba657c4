"""dnc_keras.progress: bars only on a terminal and without --quiet; the long steps use them."""

import argparse
import io

import numpy as np
import pytest

from dnc_keras import cli, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def stderr(monkeypatch):
    """Returns a function installing a fake stderr (a terminal or not) and returning it."""
    monkeypatch.setattr(progress, "DELAY", 0.0)  # show at once: the steps here are short

    def install(tty):
        stream = _Terminal() if tty else io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        return stream

    yield install
    progress.set_enabled(None)


def _drawn(stream):
    return stream.getvalue().replace("\r", "\n")


def test_off_when_stderr_is_not_a_terminal(stderr):
    stream = stderr(tty=False)
    assert not progress.enabled()
    assert list(progress.bar(range(3), desc="embedding")) == [0, 1, 2]
    with progress.working("k-means"):
        pass
    assert stream.getvalue() == ""


def test_on_for_a_terminal_off_with_quiet_on_when_forced(stderr):
    stream = stderr(tty=True)
    assert progress.enabled()
    list(progress.bar(range(3), desc="embedding", unit="img"))
    assert "embedding" in _drawn(stream) and "0/3" in _drawn(stream)
    with progress.forced(False):  # --quiet
        assert not progress.enabled()
    assert progress.enabled()  # restored after the command
    stream = stderr(tty=False)
    progress.set_enabled(True)
    list(progress.bar(range(2), desc="forced"))
    assert "forced:   0%" in _drawn(stream)
    with pytest.raises(ValueError, match="enabled must be True, False or None"):
        progress.set_enabled("yes")


def test_quiet_turns_bars_off_for_the_command_only(stderr, monkeypatch):
    stderr(tty=True)
    seen = []
    monkeypatch.setattr(cli, "search_command", lambda args: seen.append(progress.enabled()))
    assert cli.run(argparse.Namespace(command="search", quiet=True)) == 0
    assert cli.run(argparse.Namespace(command="search", quiet=False)) == 0
    assert seen == [False, True]


def test_embedding_and_nmi_show_their_steps(stderr):
    import keras

    from dnc_keras.backbones import build_encoder
    from dnc_keras.evaluation import retrieval_metrics
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.model import DnCModel

    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    model = DnCModel(build_encoder(backbone, 4, dropout=0.0, freeze_bn_stats=False),
                     SubspaceMasks(4, 1))
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    quiet = model.embed(x, batch_size=4)
    stream = stderr(tty=True)
    shown = model.embed(x, batch_size=4)
    np.testing.assert_array_equal(shown, quiet)  # the bar changes nothing computed
    assert "embedding (embedding)" in _drawn(stream) and "/10 " in _drawn(stream)
    retrieval_metrics(shown, np.repeat(np.arange(5), 2), ks=(1,))
    assert "NMI: k-means, 5 clusters on 10 items" in _drawn(stream)
