import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, torch
    from pocketlearn.memory.allocator import keep_freed_memory

    def faults_of_steps():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            step = [torch.ones(4 << 20) for _ in range(4)]  # 4 x 16 MiB: a step's logits, their gradient...
            del step  # freed together: 64 MiB at the heap's top, beyond glibc's own trim threshold
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = faults_of_steps()
    applied = keep_freed_memory()
    faults_of_steps()  # the first step after maps the memory once
    print(applied, default, faults_of_steps())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_memory_is_reused_without_page_faults_once_kept():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    applied, default, kept = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    assert default > 20 * 8000  # 16,384 pages a step by default: each step faults its tensors in again
    assert kept < default / 20
