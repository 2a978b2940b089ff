import subprocess
import sys
import textwrap

import pytest

PAGES_TOUCHED = 20 * 4 * (16 << 20) // 4096  # 20 steps of 4 tensors of 16 MiB
SCRIPT = textwrap.dedent("""
    import resource, torch
    from pocketlearn.memory.allocator import keep_freed_memory

    def faults_of_steps():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            step = [torch.ones(4 << 20) for _ in range(4)]  # 4 x 16 MiB: a step's logits, their gradient...
            del step  # freed together: 64 MiB at the heap's top, beyond glibc's own trim threshold
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    applied = keep_freed_memory()
    faults_of_steps()  # the first step maps the memory once
    print(applied, faults_of_steps())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_memory_is_reused_without_page_faults_once_kept():
    # By default these steps fault in 12-100% of their pages again every time (glibc trims the heap's top, or
    # unmaps the blocks, depending on where they landed); kept, the later steps find the memory mapped.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) < PAGES_TOUCHED / 20
