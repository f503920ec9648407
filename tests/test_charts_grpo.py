"""The GRPO reward chart (studio.charts.reward_chart): what a person watches while a GRPO run trains."""

from studio.charts import is_reward_history, loss_chart, overlay_chart, reward_chart


def _history(kl=False):
    rows = []
    for step in range(1, 5):
        row = {"step": step, "loss": 0.01 * step, "reward": 0.1 * step, "reward_std": 0.05,
               "rewards/number/mean": 0.1 * step, "rewards/format_last_line/mean": 0.5,
               "completions/mean_length": 10.0 + step, "frac_reward_zero_std": 1 - 0.2 * step}
        if kl:
            row["kl"] = 0.001 * step
        rows.append(row)
    return rows


def test_reward_chart_draws_mean_band_each_function_length_and_no_signal():
    fig = reward_chart(_history(), "GRPO run")
    names = [t.name for t in fig.data]
    assert names == ["± std", "mean reward", "number", "format_last_line", "completion length (mean tokens)",
                     "no signal: groups with all-equal rewards"]
    band, mean = fig.data[0], fig.data[1]
    # the band goes up the mean + std and back down the mean − std: a closed shape around the mean
    assert list(band.x) == [1, 2, 3, 4, 4, 3, 2, 1]
    assert [round(y, 3) for y in band.y] == [0.15, 0.25, 0.35, 0.45, 0.35, 0.25, 0.15, 0.05]
    assert band.fill == "toself" and list(mean.y) == [0.1 * s for s in range(1, 5)]
    no_signal = fig.data[-1]
    assert no_signal.yaxis != fig.data[-2].yaxis  # a share on its own axis beside the token count
    assert [a.text for a in fig.layout.annotations][:2] == ["reward: mean ± std, each function's mean",
                                                           "completion length · no-signal groups"]
    assert "KL" not in names  # beta 0: no reference, no KL panel


def test_kl_gets_its_own_panel_when_the_run_logs_it():
    fig = reward_chart(_history(kl=True))
    kl = [t for t in fig.data if t.name == "KL"]
    assert len(kl) == 1 and list(kl[0].y) == [0.001, 0.002, 0.003, 0.004]
    assert [a.text for a in fig.layout.annotations][-1] == "KL to the reference"
    assert fig.layout.height > reward_chart(_history()).layout.height


def test_reward_history_is_told_from_sft_and_dpo():
    assert is_reward_history(_history())
    assert not is_reward_history([{"step": 1, "loss": 1.0}, {"step": 2, "rewards/chosen": 0.1, "loss": 0.9}])
    assert not is_reward_history([])
    assert [t.name for t in reward_chart([]).data] == []  # no rows yet: an empty chart, not an error
    assert loss_chart(_history()).data[0].name == "loss"


def test_two_grpo_runs_compare_by_mean_reward_others_by_loss():
    fig = overlay_chart([("a", _history()), ("b", _history())])
    assert fig.layout.title.text == "Mean reward: a vs b" and list(fig.data[0].y) == [0.1 * s for s in range(1, 5)]
    fig = overlay_chart([("a", _history()), ("sft", [{"step": 1, "loss": 2.0}])])
    assert fig.layout.title.text == "Loss: a vs sft" and list(fig.data[1].y) == [2.0]
