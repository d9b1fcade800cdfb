from fedmoe_sim.sampling import client_schedule, cohort_size, shard


def test_schedule_is_a_function_of_the_seed():
    a = client_schedule(50, 4, 0.2, seed=3)
    assert a == client_schedule(50, 4, 0.2, seed=3)
    assert a != client_schedule(50, 4, 0.2, seed=4)
    assert all(len(r) == 10 and r == sorted(set(r)) for r in a)


def test_full_participation_takes_everyone_every_round():
    assert client_schedule(5, 3, 1.0, seed=0) == [[0, 1, 2, 3, 4]] * 3


def test_train_and_evaluate_streams_are_independent():
    assert client_schedule(40, 3, 0.25, 0, "train") != client_schedule(40, 3, 0.25, 0, "evaluate")


def test_cohort_size_rounds_up_and_is_at_least_one():
    assert cohort_size(10, 0.01) == 1
    assert cohort_size(10, 0.25) == 3


def test_shard_is_balanced_contiguous_and_skips_empty_chunks():
    assert shard([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert shard([7], 4) == [[7]]
