"""Plotly figures for the dashboard (no gradio here: the UI only places them)."""

from __future__ import annotations


# The legend sits at the figure's bottom edge (container coordinates), below the x-axis title with room for
# two rows on a narrow screen: at y=-0.2 of the plot it landed on the axis title.
LEGEND = dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, xanchor="left")


def _figure(title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", height=380, margin=dict(l=50, r=20, t=60, b=110),
                      legend=LEGEND, xaxis_title="step")
    return fig


def loss_chart(history: list[dict], title: str = "Training"):
    """Loss and eval loss on the left axis (and a LAPDOG run's retriever KL loss), learning rate on the right."""
    import plotly.graph_objects as go

    fig = _figure(title)
    for key, name, dash in (("loss", "loss", None), ("eval_loss", "eval loss", "dash"),
                            ("retriever/loss", "retriever KL loss (LAPDOG stage 2)", "dot")):
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name,
                                     mode="lines+markers", line=dict(dash=dash)))
    lr = [(h["step"], h["learning_rate"]) for h in history if h.get("learning_rate") is not None]
    if lr:
        fig.add_trace(go.Scatter(x=[p[0] for p in lr], y=[p[1] for p in lr], name="learning rate", yaxis="y2",
                                 mode="lines", line=dict(color="rgba(120,120,120,0.6)", width=1)))
        fig.update_layout(yaxis2=dict(title="learning rate", overlaying="y", side="right", showgrid=False))
    fig.update_layout(yaxis_title="loss")
    return fig


def overlay_chart(runs: list[tuple[str, list[dict]]]):
    """The loss curves of several runs on one chart; GRPO runs (all of them logging a reward) by their mean
    reward, since a GRPO loss says little about how well the policy does."""
    import plotly.graph_objects as go

    key = "reward" if runs and all(is_reward_history(history) for _, history in runs) else "loss"
    label = "mean reward" if key == "reward" else "loss"
    fig = _figure(f"{label.capitalize()}: " + " vs ".join(name for name, _ in runs))
    for name, history in runs:
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines"))
    fig.update_layout(yaxis_title=label)
    return fig


def length_histogram(lengths: list[int], max_length: int | None = None):
    import plotly.graph_objects as go

    fig = _figure(f"Token lengths (train split, {len(lengths)} examples)")
    fig.add_trace(go.Histogram(x=lengths, nbinsx=min(40, max(5, len(set(lengths)))), name="examples"))
    if max_length:
        fig.add_vline(x=max_length, line_dash="dash", annotation_text=f"max_length {max_length}")
    fig.update_layout(xaxis_title="tokens", yaxis_title="examples", showlegend=False)
    return fig


# ---- DPO: loss and rewards (train and eval) -------------------------------------------------------------

# two-line titles: five one-line titles ran into each other on a narrow (420 px) screen
DPO_PANELS = [("loss", "loss"), ("rewards/chosen", "reward<br>chosen"), ("rewards/rejected", "reward<br>rejected"),
              ("rewards/margins", "reward<br>margin"), ("rewards/accuracies", "reward<br>accuracy")]


def dpo_chart(history: list[dict], title: str = "DPO"):
    """One panel per quantity TRL's DPO logs, train solid and eval dashed."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(DPO_PANELS), subplot_titles=[label for _, label in DPO_PANELS],
                        horizontal_spacing=0.05)
    for col, (key, label) in enumerate(DPO_PANELS, 1):
        for prefix, name, dash, color in (("", "train", None, "#ff7f0e"), ("eval_", "eval", "dash", "#1f77b4")):
            pts = [(h["step"], h[prefix + key]) for h in history if h.get(prefix + key) is not None]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, legendgroup=name,
                                         showlegend=col == 1, mode="lines+markers",
                                         line=dict(dash=dash, color=color)), row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=360, margin=dict(l=40, r=20, t=90, b=70),
                      legend=LEGEND)
    fig.update_annotations(font_size=12)  # the subplot titles
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=len(DPO_PANELS))
    return fig


# ---- GRPO: rewards, their spread, what the groups tell, completion length and KL ---------------------------

def is_reward_history(history: list[dict]) -> bool:
    """A GRPO run's metric rows (TRL's GRPO logs a `reward` each log step; DPO's are rewards/chosen…)."""
    return any(h.get("reward") is not None for h in history)


def _reward_names(history: list[dict]) -> list[str]:
    names = []
    for h in history:
        for key in h:
            if key.startswith("rewards/") and key.endswith("/mean") and key[8:-5] not in names:
                names.append(key[8:-5])
    return names


def reward_chart(history: list[dict], title: str = "GRPO"):
    """Stacked panels sharing the step axis: the mean reward with its ±std band and each reward function's own
    mean; completion length with the share of groups whose completions all scored alike (no signal: a zero
    advantage for each of them); KL to the reference when the run has one (beta > 0)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    has_kl = any(h.get("kl") is not None for h in history)
    # short panel titles: a 420 px screen has room for about 40 characters
    titles = ["reward: mean ± std, each function's mean", "completion length · no-signal groups"] + (
        ["KL to the reference"] if has_kl else [])
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=titles, specs=[[{"secondary_y": True}]] * len(titles))
    rows = [h for h in history if h.get("reward") is not None]
    steps = [h["step"] for h in rows]
    mean = [h["reward"] for h in rows]
    std = [h.get("reward_std") or 0.0 for h in rows]
    if rows:
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=[m + s for m, s in zip(mean, std)]
                                 + [m - s for m, s in zip(mean, std)][::-1], fill="toself",
                                 fillcolor="rgba(255,127,14,0.18)", line=dict(width=0), hoverinfo="skip", mode="lines",
                                 name="± std", legendgroup="reward"), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=mean, name="mean reward", mode="lines+markers",
                                 line=dict(color="#ff7f0e", width=2.5), legendgroup="reward"), row=1, col=1)
    for name in _reward_names(history):
        pts = [(h["step"], h[f"rewards/{name}/mean"]) for h in history if h.get(f"rewards/{name}/mean") is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines+markers",
                                 line=dict(dash="dot", width=1.5), marker=dict(size=5)), row=1, col=1)
    for key, name, secondary, style in (
            ("completions/mean_length", "completion length (mean tokens)", False, dict(color="#2ca02c")),
            ("frac_reward_zero_std", "no signal: groups with all-equal rewards", True,
             dict(color="#7f7f7f", dash="dash"))):
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines+markers",
                                     line=style), row=2, col=1, secondary_y=secondary)
    if has_kl:
        pts = [(h["step"], h["kl"]) for h in history if h.get("kl") is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name="KL", mode="lines+markers",
                                 line=dict(color="#9467bd")), row=3, col=1)
    fig.update_layout(title=title, template="plotly_white", height=300 + 190 * len(titles),
                      margin=dict(l=50, r=50, t=70, b=110), legend=LEGEND)
    fig.update_annotations(font_size=12, x=0, xanchor="left")  # the panel titles, over each panel's left edge
    fig.update_yaxes(title_text="reward", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="tokens", row=2, col=1, secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="no signal", row=2, col=1, secondary_y=True, range=[-0.02, 1.02],
                     tickformat=".0%", showgrid=False)
    for row in range(1, len(titles) + 1):
        if row != 2:
            fig.update_yaxes(secondary_y=True, visible=False, row=row, col=1)
    fig.update_xaxes(title_text="step", row=len(titles), col=1)
    if steps and max(steps) <= 12:
        fig.update_xaxes(dtick=1)  # whole steps, not 1.5
    return fig


# ---- Persona Chat: LAPDOG's retriever ----------------------------------------------------------------------
def retriever_chart(history: list[dict], title: str = "LAPDOG retriever (stage 2)"):
    """Retriever KL loss and target entropy (left axis), how often the top-1 story changed (right axis)."""
    import plotly.graph_objects as go

    fig = _figure(title)
    for key, name, axis in (("retriever/loss", "retriever KL loss", "y"),
                            ("retriever/target_entropy", "target entropy", "y"),
                            ("retriever/top1_change_rate", "top-1 changed (share of probe personas)", "y2"),
                            ("retriever/inputs_changed_share", "generator inputs changed at a refresh (share of rows)",
                             "y2")):
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, yaxis=axis,
                                     mode="lines+markers", line=dict(dash="dot" if axis == "y2" else None)))
    fig.update_layout(yaxis_title="nats", yaxis2=dict(title="top-1 changed", overlaying="y", side="right",
                                                      range=[0, 1], showgrid=False))
    return fig


# ---- Evaluate tab ------------------------------------------------------------------------------------------------
def metrics_bar_chart(metrics: dict[str, dict], keys: list[str], title: str = "Metrics (0–100)"):
    """One group of bars per metric, one bar per model."""
    import plotly.graph_objects as go

    fig = _figure(title)
    for label, values in metrics.items():
        ys = [values.get(k) for k in keys]
        fig.add_trace(go.Bar(x=keys, y=ys, name=label, text=[f"{y:.1f}" if y is not None else "" for y in ys],
                             textposition="outside"))
    top = max([v for m in metrics.values() for v in (m.get(k) for k in keys) if v is not None] or [1.0])
    fig.update_layout(barmode="group", xaxis_title="metric", yaxis_title="score", yaxis_range=[0, top * 1.15 + 1])
    return fig
