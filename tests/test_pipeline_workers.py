"""The grain input pipeline beyond one process: worker processes, resume with workers, host-count changes.

Every expectation is the order written out with numpy (`reference_batches`), not the pipeline's own
output, so a worker or restore slip cannot agree with itself.
"""
import json

import numpy as np
import pytest

from upgpt_jax.data.order import epoch_order
from upgpt_jax.data.pipeline import InputPipeline

N, BATCH, SEED = 26, 4, 11  # 6 global batches per epoch, 2 records dropped from each


def gather_indices(records):
    """The transform of these tests (a module function, so it pickles into worker processes)."""
    return {"index": np.array([record["index"] for record in records])}


def index_pipeline(**kwargs):
    return InputPipeline([{"index": np.int64(i)} for i in range(N)], BATCH, gather_indices, seed=SEED, **kwargs)


def reference_batches(first: int, count: int, process_index: int = 0, process_count: int = 1,
                      num_records: int = N) -> list[np.ndarray]:
    """Global batches first .. first + count - 1 (counted from epoch 0), this host's rows, by hand."""
    local, per_epoch = BATCH // process_count, num_records // BATCH
    batches = []
    for number in range(first, first + count):
        epoch, position = divmod(number, per_epoch)
        start = position * BATCH + process_index * local
        batches.append(epoch_order(num_records, SEED, epoch)[start:start + local])
    return batches


def take(pipeline, count):
    return [next(pipeline)["index"] for _ in range(count)]


def test_worker_processes_give_the_batches_of_the_main_process():
    with index_pipeline(num_workers=0, prefetch=0) as inline, index_pipeline(num_workers=2) as workers:
        expected = reference_batches(0, 14)  # crosses two epoch boundaries
        np.testing.assert_array_equal(np.stack(take(inline, 14)), np.stack(expected))
        np.testing.assert_array_equal(np.stack(take(workers, 14)), np.stack(expected))
        assert workers.get_state() == inline.get_state() == {"seed": SEED, "epoch": 2, "position": 2}


def test_num_epochs_ends_iteration_with_workers():
    with index_pipeline(num_workers=2, num_epochs=2) as pipeline:
        np.testing.assert_array_equal(np.stack([batch["index"] for batch in pipeline]), np.stack(reference_batches(0, 12)))


def test_resume_with_workers_continues_the_sequence():
    with index_pipeline(num_workers=2) as interrupted:
        saved = {}
        for consumed in (3, 6):  # mid-epoch, then just after an epoch: 3 more batches each time
            take(interrupted, 3)
            saved[consumed] = json.loads(json.dumps(interrupted.get_state()))  # as the checkpoint stores it
    with index_pipeline(num_workers=2) as resumed:
        take(resumed, 2)  # workers already reading ahead from the start: the restore discards that
        for consumed, state in saved.items():
            resumed.set_state(state)
            np.testing.assert_array_equal(np.stack(take(resumed, 5)), np.stack(reference_batches(consumed, 5)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_saved_on_two_hosts_continues_the_global_sequence_on_one(num_workers):
    hosts = [index_pipeline(process_index=p, process_count=2, prefetch=0) for p in (0, 1)]
    for process_index, host in enumerate(hosts):
        shares = take(host, 4)
        np.testing.assert_array_equal(np.stack(shares), np.stack(reference_batches(0, 4, process_index, 2)))
    states = [host.get_state() for host in hosts]
    assert states[0] == states[1]  # every host saves the same global position

    with index_pipeline(process_index=0, process_count=1, num_workers=num_workers) as single:
        single.set_state(states[0])
        np.testing.assert_array_equal(np.stack(take(single, 5)), np.stack(reference_batches(4, 5)))
        back_to_two = single.get_state()
    for process_index, host in enumerate(hosts):  # and the other way: one host's state, two hosts
        host.set_state(back_to_two)
        np.testing.assert_array_equal(np.stack(take(host, 2)), np.stack(reference_batches(9, 2, process_index, 2)))


def failing_on_record_5(records):
    if any(int(record["index"]) == 5 for record in records):
        raise ValueError("cannot decode record 5")
    return gather_indices(records)


def test_a_transform_error_in_a_worker_reaches_the_main_process():
    failing = next(batch for batch in range(N // BATCH) if 5 in reference_batches(batch, 1)[0])  # 3 with SEED
    with InputPipeline([{"index": np.int64(i)} for i in range(N)], BATCH, failing_on_record_5, seed=SEED,
                       num_workers=2) as pipeline:
        np.testing.assert_array_equal(np.stack(take(pipeline, failing)), np.stack(reference_batches(0, failing)))
        with pytest.raises(ValueError, match="cannot decode record 5"):
            next(pipeline)
        assert pipeline.get_state() == {"seed": SEED, "epoch": 0, "position": failing}  # not delivered


def test_feature_shards_are_read_in_workers(tmp_path):
    """Features mode: the ArrayRecord-backed FeatureSource pickles into workers and reads the same rows."""
    from upgpt_jax.data.features import FeatureSource, FeatureWriter, write_metadata
    from upgpt_jax.data.transforms import FeatureTransform

    count, rng = 10, np.random.default_rng(0)
    records = [{"latent_moments": rng.standard_normal((8, 6, 8)).astype(np.float32),
                "text_embedding": rng.standard_normal((77, 16)).astype(np.float32),
                "style_embedding": rng.standard_normal((9, 16)).astype(np.float32),
                "mask": rng.integers(0, 2, (64, 48, 1)).astype(np.uint8) * 255,
                "smpl": rng.standard_normal(85).astype(np.float32),
                "style_present": rng.random(9) > 0.3} for _ in range(count)]
    with FeatureWriter(tmp_path, 0, 1) as writer:
        for record in records:
            writer.write(record)
    write_metadata(tmp_path, count=count, global_batch_size=BATCH, process_count=1, example=records[0],
                   signature={}, info={})
    with InputPipeline(FeatureSource(tmp_path), BATCH, FeatureTransform(), seed=SEED, num_workers=2) as pipeline:
        for indices in reference_batches(0, 5, num_records=count):  # 2 batches an epoch: crosses two epochs
            batch, expected = next(pipeline), FeatureTransform()([records[i] for i in indices])
            assert set(batch) == set(expected)
            for name in expected:
                np.testing.assert_array_equal(batch[name], expected[name])


def test_training_pipeline_sources_and_transforms_run_in_workers(tiny_config):
    """The trainer's own pipeline (synthetic renderer with its part weights, CLIP tokenizer) pickles
    into workers and gives the main process's batches."""
    from upgpt_jax.train.data import training_pipeline

    config = tiny_config.copy_and_resolve_references()
    config.data.num_examples = 12
    config.train.batch_size = 4
    batches = {}
    for num_workers in (0, 2):
        config.data.num_workers = num_workers
        with training_pipeline(config) as pipeline:
            assert pipeline.num_workers == num_workers
            batches[num_workers] = [next(pipeline) for _ in range(4)]  # crosses an epoch (3 batches)
    for inline, worker in zip(batches[0], batches[2]):
        # loss_weights: the main job's part weights (data.part_loss_weights), rendered in the workers too
        assert set(inline) == set(worker) == {"image", "person_mask", "text_ids", "styles", "style_present", "pose",
                                              "loss_weights"}
        for name in inline:
            np.testing.assert_array_equal(worker[name], inline[name])
