"""Length-grouped sampler determinism and the on-disk teacher cache."""

import numpy as np
import torch

from slimformer.data.batching import LengthGroupedBatchSampler, token_budget_batches
from slimformer.methods.distill.teacher_cache import TeacherCache


def test_sampler_covers_every_index_once_and_repeats_under_seed():
    lengths = list(np.random.default_rng(0).integers(1, 60, size=503))
    a = LengthGroupedBatchSampler(lengths, 16, seed=3, group_size=4)
    b = LengthGroupedBatchSampler(lengths, 16, seed=3, group_size=4)
    a.set_epoch(1)
    b.set_epoch(1)
    assert a.batches() == b.batches()
    flat = sorted(i for batch in a.batches() for i in batch)
    assert flat == list(range(503))
    a.set_epoch(2)
    assert a.batches() != b.batches()


def test_sampler_groups_similar_lengths():
    lengths = list(np.random.default_rng(1).integers(1, 100, size=1000))
    sampler = LengthGroupedBatchSampler(lengths, 32, seed=0)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in sampler.batches()])
    assert spread < 20  # random batches would span ~95


def test_token_budget_batches_run_longest_first_within_the_budget():
    lengths = [3, 9, 5, 5, 2, 40, 5, 1]
    batches = token_budget_batches(lengths, tokens=12, max_rows=3)
    assert sorted(p for b in batches for p in b) == list(range(len(lengths)))
    flat = [lengths[p] for b in batches for p in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    for b in batches:  # padded to the batch's first (longest) row
        assert len(b) == 1 or len(b) * lengths[b[0]] <= 12
        assert len(b) <= 3
    assert batches[0] == [5]  # a row over the budget goes alone
    assert [len(b) for b in batches] == [1, 1, 2, 2, 2]


def test_teacher_cache_round_trip_and_persistence(tmp_path):
    cache = TeacherCache(tmp_path, "teach", "data", num_rows=10)
    assert cache.missing(np.arange(10)).all()
    cache.write(np.array([2, 5]), torch.tensor([[1.5, -2.0], [0.25, 4.0]]))
    cache.flush()
    again = TeacherCache(tmp_path, "teach", "data", num_rows=10)
    assert again.filled_count == 2
    assert list(again.missing(np.array([2, 3, 5]))) == [False, True, False]
    assert torch.equal(again.read(np.array([5, 2])), torch.tensor([[0.25, 4.0], [1.5, -2.0]]))
    assert again.values.dtype == np.float16


def test_prepared_loader_follows_our_epoch_even_after_a_skip():
    """Accelerate re-seeds samplers with its own pass counter; the loop must win (--resume)."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    sampler = LengthGroupedBatchSampler(list(range(1, 101)), 10, seed=0)
    acc = Accelerator(cpu=True)
    loader = acc.prepare(DataLoader(list(range(100)), batch_sampler=sampler))
    sampler.set_epoch(1)
    expected = sampler.batches()
    skipped = acc.skip_first_batches(loader, 3)
    sampler.set_epoch(1)
    skipped.set_epoch(1)
    assert [b.tolist() for b in skipped] == expected[3:]
