"""restorekit.memory: keeping freed memory in the process, and the methods that ask for it."""

from __future__ import annotations

import pytest
import torch


def test_keep_freed_memory_is_idempotent_and_safe() -> None:
    """Run in a child process: the setting is process-wide and permanent."""
    import subprocess
    import sys

    code = ("import platform, torch\n"
            "from restorekit.memory import keep_freed_memory\n"
            "a = keep_freed_memory(); b = keep_freed_memory()\n"
            "x = torch.ones(64 << 20, dtype=torch.uint8); del x\n"
            "y = torch.ones(64 << 20, dtype=torch.uint8)\n"
            "assert a == b == (platform.libc_ver()[0] == 'glibc'), (a, b)\n"
            "assert int(y.sum()) == 64 << 20\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("resolution, keep, expected", [(256, True, 1), (256, False, 0), (64, True, 0)])
def test_pulse_keeps_memory_on_cpu_for_large_generators(monkeypatch, resolution, keep, expected) -> None:
    """PULSE allocates the generator's activations and gradients at every step: from 256 px up it asks
    glibc to keep them (keep_memory), below that and when told not to, it leaves malloc alone."""
    from restorekit_baselines.pulse import Pulse

    calls = []
    monkeypatch.setattr("restorekit.memory.keep_freed_memory", lambda: calls.append(1) or True)
    m = Pulse(Pulse.Options(random_generator=True, steps=1, keep_memory=keep,
                            generator_options={"resolution": resolution, "channel_multiplier": 1,
                                               "channel_max": 8, "n_mlp": 1, "style_dim": 8}))
    out = m.restore(torch.rand(1, 3, 8, 8), 2)
    assert out.shape == (1, 3, 16, 16) and len(calls) == expected
