"""bench.memory: the PSS of a process tree, and its peak sampled while a load runs ((g) reads it while serving)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench import memory

# A child that holds 64 MiB (touched, so resident) for a second, frees it, and then idles.
HOLD_THEN_FREE = ("import sys, time; block = bytearray(64 << 20); print('held', flush=True); time.sleep(1.0); "
                  "del block; print('freed', flush=True); time.sleep(30)")


def test_sampling_sees_memory_held_only_while_the_block_runs() -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLD_THEN_FREE], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        with memory.sampling(child.pid, interval=0.05) as sampler:
            assert child.stdout.readline().strip() == "freed"
            time.sleep(0.2)
        after = memory.tree_pss_mib(child.pid)[0]
    finally:
        child.kill()
        child.wait()
    # The 64 MiB block counted while it was held; a read after the block (the child idle) misses it.
    assert sampler.peak >= 64
    assert sampler.peak - after >= 60
    assert len(sampler.samples) >= 3
    assert sampler.samples[-1] < sampler.peak


def test_tree_counts_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                               "print('ok', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ok"
        total, count = memory.tree_pss_mib(parent.pid)
    finally:
        for pid in memory.tree(parent.pid)[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()
    assert count == 2
    assert total > 0
