"""`--help` prints and exits 0 for every service's flags.

argparse %-formats each help string when it prints them, so a bare `%` in one (the
autoscaler's "~15-25 % more CPU") crashed `--help` with "unsupported format character"
while parsing real flags still worked. Here rather than per service because the bug was
the autoscaler's; every service builds its parser the same way (`read_flags`).
"""

from __future__ import annotations

import pytest

from ebb.activator.settings import load as activator_load
from ebb.autoscaler.main import load as autoscaler_load
from ebb.controller.settings import load as controller_load
from ebb.queue.settings import load as queue_load
from ebb.webhook.main import load_settings as webhook_load

LOADERS = {
    "queue": queue_load,
    "activator": activator_load,
    "autoscaler": autoscaler_load,
    "controller": controller_load,
    "webhook": webhook_load,
}


@pytest.mark.parametrize("service", sorted(LOADERS))
def test_help_exits_0_and_lists_every_flag(service, capsys):
    with pytest.raises(SystemExit) as exit_:
        LOADERS[service](["--help"], {})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    assert "--help" in out


def test_autoscaler_help_shows_the_percent_sign(capsys):
    with pytest.raises(SystemExit):
        autoscaler_load(["--help"], {})
    assert "~15-25 % more CPU" in " ".join(capsys.readouterr().out.split())
