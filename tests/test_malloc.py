"""keep_freed_memory: big freed blocks are reused instead of being faulted in again.

Each case runs in a fresh interpreter: what glibc does with a freed block depends on what the
heap already holds, and the test process's heap depends on every test before it."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from slimformer.utils.malloc import keep_freed_memory

def allocate():  # a 64 MB step buffer: allocated, touched, freed
    torch.ones(16 * 1024 * 1024).sum()

with keep_freed_memory(sys.argv[1] == "on") as applied:
    assert applied == (sys.argv[1] == "on")
    for _ in range(10):  # the heap settles after a few rounds
        allocate()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        allocate()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(faults / (64 * 1024 * 1024 / resource.getpagesize()))
"""


def pages_faulted_per_allocation(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ALLOCATION, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_freed_big_blocks_are_reused_inside_the_block():
    assert pages_faulted_per_allocation("on") < 0.3


def test_disabled_leaves_the_allocator_alone():
    assert pages_faulted_per_allocation("off") > 0.7  # unmapped on free, faulted in again
