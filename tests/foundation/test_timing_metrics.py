"""The time split of a step (README "Where the time goes"): episode seconds summed over a batch's finished
episodes, failed episodes and non-final window rows left out."""

from spa_reward.metrics import episode_metrics


def test_episode_seconds_are_summed_over_the_batchs_data_episodes():
    infos = [
        {"won": 1.0, "env_seconds": 1.5, "llm_seconds": 4.0, "reward_seconds": 0.25},
        {"won": 0.0, "env_seconds": 2.0, "llm_seconds": 1.0},  # no reward time recorded: not counted there
        {"won": 0.0, "env_seconds": 9.0, "llm_seconds": 9.0, "env_failed": 1.0},  # not data
        {"won": 0.0, "env_seconds": 7.0, "session_row": 0, "session_rows": 2},  # a window session's first row
    ]
    m = episode_metrics(infos)
    assert m["timing_s/spa/env_sum"] == 3.5 and m["timing_s/spa/llm_sum"] == 5.0
    assert m["timing_s/spa/reward_sum"] == 0.25 and m["episode/env_failures"] == 1.0


def test_no_timing_keys_without_timings():
    assert not any(k.startswith("timing_s/") for k in episode_metrics([{"won": 1.0}]))
