"""bulkscribe analytics: what is in an OUT (a marimo notebook; README, "Analyse the tables").

    BULKSCRIBE_OUT=./out marimo edit notebooks/analytics.py     # interactive
    BULKSCRIBE_OUT=s3://bucket/stt python notebooks/analytics.py # headless, top to bottom

Queries live in tasks/analytics.py (lazy polars: only aggregates are collected).
BULKSCRIBE_FIGURES=DIR also saves the overview figure as DIR/overview.png.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="bulkscribe analytics")


@app.cell
def _():
    import os
    import sys
    from pathlib import Path

    import marimo as mo
    import matplotlib

    if not os.environ.get("DISPLAY") and "marimo" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run from a checkout
    from tasks import analytics

    OUT = os.environ.get("BULKSCRIBE_OUT", "./out")
    FIGURES = os.environ.get("BULKSCRIBE_FIGURES")
    out = analytics.Out(OUT)
    transcripts = out.transcripts()
    words = out.current("words")
    segments = out.current("segments")
    return FIGURES, OUT, Path, analytics, mo, os, out, pl, plt, segments, transcripts, words


@app.cell
def _(OUT, mo, pl, transcripts):
    totals = transcripts.select(files=pl.len(), hours=pl.col("duration_s").sum() / 3600,
                                cost=pl.col("cost").sum()).collect().row(0, named=True)
    mo.md(f"""
    # bulkscribe: `{OUT}`

    **{totals['files']}** transcripts (the latest per file and model), **{(totals['hours'] or 0):.2f}** audio hours,
    **{(totals['cost'] or 0):.4f} USD**.
    """)
    return


@app.cell
def _(analytics, mo, pl, plt, transcripts):
    usage = analytics.daily_usage(transcripts).collect()
    fig_usage, (ax_hours, ax_cost) = plt.subplots(1, 2, figsize=(11, 3.2))
    stacked(ax_hours, usage, "audio_hours")
    stacked(ax_cost, usage, "cost")
    ax_hours.set_title("audio hours per day")
    ax_cost.set_title("cost per day (USD)")
    fig_usage.tight_layout()
    mo.vstack([mo.md("## Usage per day and model"), fig_usage, usage.with_columns(pl.col("cost").round(4))])
    return (usage,)


@app.function
def stacked(ax, usage, column):
    """Bars per day, one colour per model, stacked."""
    days = usage.select(usage["day"].unique().sort())["day"]
    wide = usage.pivot(on="model", index="day", values=column).fill_null(0)
    wide = days.to_frame().join(wide, on="day", how="left").fill_null(0)
    bottom = [0.0] * wide.height
    for name in [c for c in wide.columns if c != "day"]:
        ax.bar([str(d) for d in wide["day"]], wide[name], bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, wide[name])]
    if wide.width > 1:
        ax.legend(fontsize=7)


@app.cell
def _(analytics, mo, plt, transcripts):
    langs = analytics.languages(transcripts).collect()
    fig_lang, ax_lang = plt.subplots(figsize=(5, 2.6))
    ax_lang.barh(langs["language"].to_list()[::-1], langs["files"].to_list()[::-1])
    ax_lang.set_title("files per language")
    fig_lang.tight_layout()
    mo.vstack([mo.md("## Languages"), fig_lang, langs])
    return (langs,)


@app.cell
def _(analytics, mo, out, plt):
    reasons = analytics.failure_reasons(out.scan("failures")).collect()
    fig_fail, ax_fail = plt.subplots(figsize=(8, 2.6))
    for _reason, _part in reasons.group_by("reason", maintain_order=True):
        ax_fail.plot([str(d) for d in _part["day"]], _part["failures"], marker="o", label=_reason[0])
    ax_fail.set_title("failed attempts per day, by reason")
    if reasons.height:
        ax_fail.legend(fontsize=8)
    fig_fail.tight_layout()
    mo.vstack([mo.md("## Failures over time"), fig_fail, reasons])
    return


@app.cell
def _(analytics, mo, segments):
    talk = analytics.speaker_talk_time(segments).collect()
    turns = analytics.turn_taking(segments).collect()
    mo.vstack([mo.md("## Speakers (diarized files)\nTalk time and share per speaker; turns and speaker changes per file."),
               talk if talk.height else mo.md("_No diarized files (run Elevenlabs-STT with `--diarize`)._"), turns])
    return (talk,)


@app.cell
def _(analytics, mo, plt, transcripts, words):
    rate = analytics.speaking_rate(transcripts, words).collect()
    fig_rate, ax_rate = plt.subplots(figsize=(5, 2.6))
    ax_rate.hist(rate["wpm"].drop_nulls().to_list(), bins=20)
    ax_rate.set_title("speaking rate (words per minute)")
    fig_rate.tight_layout()
    mo.vstack([mo.md("## Speaking rate per file\nFrom word timings where there are, else transcript words over the "
                     "file's duration (`timed`)."), fig_rate, rate])
    return (rate,)


@app.cell
def _(mo, os):
    keyword = mo.ui.text(value=os.environ.get("BULKSCRIBE_KEYWORD", "country"), label="keyword")
    keyword
    return (keyword,)


@app.cell
def _(analytics, keyword, mo, out, words):
    hits = analytics.keyword_in_context(words, keyword.value, width=8, limit=50,
                                        storage_options=out.storage_options)
    lines = [f"| [{h['start']:.2f} s]({h['link']}) | {h['source'].rsplit('/', 1)[-1]} | {h['speaker'] or ''} "
             f"| {h['left']} **{h['hit']}** {h['right']} |" for h in hits.iter_rows(named=True)]
    mo.md(f"## Keyword in context: `{keyword.value}` ({hits.height} hits, 50 at most)\n\n"
          "| at | file | speaker | context |\n|---|---|---|---|\n" + "\n".join(lines))
    return (hits,)


@app.cell
def _(mo, pl, words):
    with_words = (words.filter(pl.col("type") == "word").select("source", "model").unique()
                  .sort("source", "model").head(500).collect())
    choices = {f"{r['source'].rsplit('/', 1)[-1]} ({r['model']})": (r["source"], r["model"])
               for r in with_words.iter_rows(named=True)}
    picked = mo.ui.dropdown(options=list(choices), value=next(iter(choices), None), label="file")
    picked
    return choices, picked


@app.cell
def _(analytics, choices, mo, picked, transcripts, words, pl):
    if picked.value is None:
        shown = mo.md("## One transcript\n_No file with word timings (Elevenlabs-STT) in this OUT._")
    else:
        source, model = choices[picked.value]
        one = analytics.file_words(words, source, model)
        text = (transcripts.filter((pl.col("source") == source) & (pl.col("model") == model))
                .select("text").collect().item())
        shown = mo.vstack([mo.md(f"## One transcript: `{source}` ({model})\n\n> {text}"), one])
    shown
    return


@app.cell
def _(FIGURES, Path, langs, plt, rate, talk, usage):
    overview, axes = plt.subplots(1, 4, figsize=(15, 3.1))
    stacked(axes[0], usage.with_columns(audio_minutes=usage["audio_hours"] * 60), "audio_minutes")
    axes[0].set_title("audio minutes per day, by model")
    axes[1].barh(langs["language"].to_list()[::-1], langs["files"].to_list()[::-1])
    axes[1].set_title("files per language")
    axes[2].hist(rate["wpm"].drop_nulls().to_list(), bins=15)
    axes[2].set_title("words per minute")
    if talk.height:
        busiest = talk.group_by("source", "model").len().sort("len", "source", descending=[True, False]).row(0)
        first = talk.filter((talk["source"] == busiest[0]) & (talk["model"] == busiest[1]))
        axes[3].bar(first["speaker"].to_list(), first["talk_s"].to_list())
        axes[3].set_title(f"talk time (s): {busiest[0].rsplit('/', 1)[-1]}", fontsize=9)
    overview.tight_layout()
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        overview.savefig(Path(FIGURES) / "overview.png", dpi=80)
    overview
    return


if __name__ == "__main__":
    app.run()
