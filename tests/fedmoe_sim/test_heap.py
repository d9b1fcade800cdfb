"""fedmoe_sim.heap: freed buffers are reused from the heap, not faulted in anew each time."""

import subprocess
import sys

import pytest

from fedmoe_sim import heap

# A worker's message in miniature: buffers of growing sizes (0.5 to 4 MiB) alive at once, all
# freed at the end. glibc's default serves each new largest size with a fresh mapping and trims
# the freed top of its heap, so the next message faults most pages in again. Run in a fresh
# process: the settings are process-wide and this pytest process may have set them already
# (every Workspace does).
CYCLES = """
import resource, sys
import numpy as np
if sys.argv[1] == "reuse":
    from fedmoe_sim.heap import reuse_freed_memory
    assert reuse_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bufs = [np.ones((1 + j) << 19, np.uint8) for j in range(8)]     # written: every page touched
    del bufs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc knobs")
def test_buffers_freed_at_the_end_of_a_message_are_reused_by_the_next_without_faulting_again():
    default, reused = _faults("default"), _faults("reuse")
    pages = 20 * sum((1 + j) << 19 for j in range(8)) // 4096   # every cycle's pages faulted in anew
    assert default > pages / 4, f"glibc's default kept the buffers ({default} faults): the test shows nothing"
    assert reused < default / 4, f"{reused} page faults with reuse against {default} without"


def test_asking_again_is_harmless():
    assert heap.reuse_freed_memory() == heap.reuse_freed_memory()
