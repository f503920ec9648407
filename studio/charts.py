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
    """The loss curves of several runs on one chart."""
    import plotly.graph_objects as go

    fig = _figure("Loss: " + " vs ".join(name for name, _ in runs))
    for name, history in runs:
        pts = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines"))
    fig.update_layout(yaxis_title="loss")
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
