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

mode, megabytes = sys.argv[1], int(sys.argv[2])

def allocate():  # a step buffer: allocated, touched, freed
    torch.ones(megabytes * 1024 * 1024 // 4).sum()

def faults_per_page():
    # the median round: the first rounds fault the whole buffer in or none of it, until
    # the heap settles (up to the 8th round in local runs), and CI once saw 3 of 10 rounds
    # after this warm-up fault theirs in
    for _ in range(10):
        allocate()
    rounds = []
    for _ in range(21):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        allocate()
        rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    pages = megabytes * 1024 * 1024 / resource.getpagesize()
    return sorted(rounds)[len(rounds) // 2] / pages

if mode == "after":  # a training block came and went; then other work in the same process
    with keep_freed_memory(True):
        allocate()
    print(faults_per_page())
else:
    with keep_freed_memory(mode == "on") as applied:
        assert applied == (mode == "on")
        print(faults_per_page())
"""


def pages_faulted_per_allocation(mode: str, megabytes: int = 64) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ALLOCATION, mode, str(megabytes)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_freed_big_blocks_are_reused_inside_the_block():
    assert pages_faulted_per_allocation("on") < 0.3


def test_disabled_leaves_the_allocator_alone():
    assert pages_faulted_per_allocation("off") > 0.7  # unmapped on free, faulted in again


def test_after_the_block_mid_size_blocks_still_come_from_the_heap():
    # glibc's static 128 KB threshold would mmap and fault in every 4 MB buffer again
    assert pages_faulted_per_allocation("after", megabytes=4) < 0.3


def test_after_the_block_huge_blocks_go_back_to_the_os():
    assert pages_faulted_per_allocation("after", megabytes=64) > 0.7
