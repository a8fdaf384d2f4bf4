"""gmbound.cpu_allocator: glibc keeps freed blocks for reuse, so big reallocations stop page-faulting."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import gmbound.train as train_mod
from gmbound import cpu_allocator
from gmbound.config import ConfigError, make_config

GLIBC = cpu_allocator._libc() is not None

# A child process (the settings are process-wide): the minor page faults of re-allocating and
# filling a 64 MB tensor, after three rounds that bring the blocks in.
_CHILD = textwrap.dedent("""
    import resource, sys, torch
    from gmbound import cpu_allocator
    if sys.argv[1] == "keep":
        assert cpu_allocator.keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        torch.empty(16 * 2 ** 20).fill_(1.0)
    before = faults()
    for _ in range(5):
        torch.empty(16 * 2 ** 20).fill_(1.0)
    print(faults() - before)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: keep_freed_memory changes nothing there")
def test_reallocations_stop_page_faulting():
    block = 64 * 2 ** 20 // 4096  # the pages one fresh 64 MB block faults in
    assert _faults("default") > 4 * block  # glibc maps and unmaps blocks this large every time
    # kept blocks are reused (0 faults in most runs; now and then glibc extends its heap once more)
    assert _faults("keep") <= block


def test_training_on_cpu_keeps_freed_memory_unless_switched_off(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "keep_freed_memory", lambda: calls.append(1) or True)
    tiny = ["model.name=mlp", "model.hidden=[8]", "data.train_subset=32", "data.test_subset=16",
            "train.batch_size=32", "train.epochs=1", "train.method=natural", "train.progress=false",
            "train.tensorboard=false", "device=cpu"]
    train_mod.train(make_config(overrides=tiny + [f"out_dir={tmp_path / 'a'}"]), quiet=True)
    assert calls == [1]
    train_mod.train(make_config(overrides=tiny + [f"out_dir={tmp_path / 'b'}", "keep_freed_memory=false"]),
                    quiet=True)
    assert calls == [1]


def test_the_config_key_is_on_by_default_and_takes_booleans_only():
    assert make_config(overrides=[])["keep_freed_memory"] is True
    assert make_config(overrides=["keep_freed_memory=false"])["keep_freed_memory"] is False
    with pytest.raises(ConfigError, match="keep_freed_memory"):
        make_config(overrides=["keep_freed_memory=sometimes"])
