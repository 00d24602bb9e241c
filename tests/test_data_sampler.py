"""IndexSampler / RecordDataset: the order, sharding and resume contract every dataset shares."""
from __future__ import annotations

import json

import numpy as np
import pytest

from md4_jax.data import sampler as sampler_lib


def _take(s: sampler_lib.IndexSampler, n: int) -> list[np.ndarray]:
  return [s.next_indices() for _ in range(n)]


def _reference_stream(num_records: int, seed: int, num_epochs: int) -> np.ndarray:
  """The documented global order: epoch e = default_rng([seed, e]) shuffle of range(N), epochs concatenated."""
  orders = []
  for e in range(num_epochs):
    order = np.arange(num_records)
    np.random.default_rng([seed, e]).shuffle(order)
    orders.append(order)
  return np.concatenate(orders)


def test_train_stream_matches_reference_across_epoch_boundaries():
  s = sampler_lib.IndexSampler(10, batch_size=4, seed=3, shuffle=True, repeat=True)
  got = np.concatenate(_take(s, 10))  # 40 records = 4 epochs, batches straddle epoch ends
  np.testing.assert_array_equal(got, _reference_stream(10, 3, 4))
  for e in range(4):  # every epoch is a permutation, and epochs differ
    assert sorted(got[10 * e:10 * (e + 1)]) == list(range(10))
  assert not np.array_equal(got[:10], got[10:20])
  assert s.get_state() == {'epoch': 4, 'position': 0, 'num_records': 10}


def test_seed_changes_order_and_same_seed_repeats():
  a = np.concatenate(_take(sampler_lib.IndexSampler(50, batch_size=5, seed=0, shuffle=True, repeat=True), 4))
  b = np.concatenate(_take(sampler_lib.IndexSampler(50, batch_size=5, seed=0, shuffle=True, repeat=True), 4))
  c = np.concatenate(_take(sampler_lib.IndexSampler(50, batch_size=5, seed=1, shuffle=True, repeat=True), 4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('shuffle,repeat', [(True, True), (False, False)])
def test_shards_are_disjoint_slices_of_the_single_process_batches(shuffle, repeat):
  num_records, per_shard, count = 23, 2, 3
  single = sampler_lib.IndexSampler(num_records, batch_size=per_shard * count, seed=7, shuffle=shuffle,
                                    repeat=repeat)
  shards = [sampler_lib.IndexSampler(num_records, batch_size=per_shard, seed=7, shuffle=shuffle, repeat=repeat,
                                     shard_index=k, shard_count=count) for k in range(count)]
  num_steps = 9 if repeat else num_records // (per_shard * count)
  for _ in range(num_steps):
    parts = [s.next_indices() for s in shards]
    np.testing.assert_array_equal(np.concatenate(parts), single.next_indices())
  assert all(s.get_state() == single.get_state() for s in shards)


def test_shards_together_read_each_record_once_per_epoch():
  shards = [sampler_lib.IndexSampler(24, batch_size=2, seed=1, shuffle=True, repeat=True, shard_index=k,
                                     shard_count=3) for k in range(3)]
  for _ in range(2):  # two epochs of 4 global batches
    per_shard = [np.concatenate(_take(s, 4)) for s in shards]
    np.testing.assert_array_equal(np.sort(np.concatenate(per_shard)), np.arange(24))


def test_eval_is_one_pass_in_order_and_drops_the_incomplete_batch():
  s = sampler_lib.IndexSampler(10, batch_size=2, seed=0, shuffle=False, repeat=False, shard_index=1, shard_count=2)
  assert s.num_batches == 2
  got = _take(s, 2)
  np.testing.assert_array_equal(got, [[2, 3], [6, 7]])  # global batches [0..3], [4..7]; records 8, 9 dropped
  for _ in range(2):
    with pytest.raises(StopIteration):
      s.next_indices()


@pytest.mark.parametrize('repeat', [True, False])
def test_resume_continues_at_the_same_example(repeat):
  make = lambda: sampler_lib.RecordDataset(
      sampler_lib.IndexSampler(37, batch_size=3, seed=5, shuffle=repeat, repeat=repeat),
      lambda idx: {'x': idx.astype(np.int32)})
  ds = make()
  for _ in range(14 if repeat else 4):
    next(ds)
  state = json.loads(json.dumps(ds.get_state()))
  expected = [next(ds)['x'] for _ in range(6 if repeat else 8)]
  fresh = make()
  fresh.set_state(state)
  np.testing.assert_array_equal([next(fresh)['x'] for _ in range(len(expected))], expected)


def test_state_resumes_on_a_different_number_of_processes():
  one = sampler_lib.IndexSampler(31, batch_size=4, seed=2, shuffle=True, repeat=True)
  _take(one, 5)
  state = one.get_state()
  two = [sampler_lib.IndexSampler(31, batch_size=2, seed=2, shuffle=True, repeat=True, shard_index=k,
                                  shard_count=2) for k in range(2)]
  for s in two:
    s.set_state(state)
  for _ in range(12):
    np.testing.assert_array_equal(np.concatenate([s.next_indices() for s in two]), one.next_indices())


@pytest.mark.parametrize('kwargs,match', [
    ({'batch_size': 0}, 'batch_size=0'),
    ({'shard_index': 2, 'shard_count': 2}, 'shard_index=2'),
    ({'seed': -1}, 'seed=-1'),
    ({'repeat': False, 'batch_size': 11}, 'no full global batch'),
])
def test_bad_arguments_raise(kwargs, match):
  args = {'batch_size': 2, 'seed': 0, 'shuffle': True, 'repeat': True} | kwargs
  with pytest.raises(ValueError, match=match):
    sampler_lib.IndexSampler(10, **args)


@pytest.mark.parametrize('state,match', [
    ({'epoch': 0, 'position': 0}, 'expected keys'),
    ({'epoch': 0, 'position': 0, 'num_records': 11}, 'config changed'),
    ({'epoch': 0, 'position': 10, 'num_records': 10}, 'position=10'),
    ({'epoch': -1, 'position': 0, 'num_records': 10}, 'epoch=-1'),
])
def test_bad_state_raises(state, match):
  s = sampler_lib.IndexSampler(10, batch_size=2, seed=0, shuffle=True, repeat=True)
  with pytest.raises(ValueError, match=match):
    s.set_state(state)
