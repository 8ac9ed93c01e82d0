"""Charts of the dashboard (Altair) and the kept-patch overlays (PIL); the Pareto front as a pure function."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
from PIL import Image, ImageDraw

from pilot.pruning.strategies import parse
from pilot.report import finite_number

BASELINE_COLOUR = "#4c4c4c"
ARM_COLOURS = ["#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#ff9896", "#aec7e8"]
TRIAL_SERIES = {"trial (meets budget)": "#2ca02c", "trial (over budget)": "#d62728",
                "trial (pruned early)": "#c7c7c7"}
PARETO_COLOUR = "#ff7f0e"
# The plot keeps its height (legend and axes come on top) and fills the container's width.
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")
BUDGET_COLOUR = "#d62728"


def pareto_front(points: Sequence[tuple[Any, Any]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, for *x to minimise* and *y to maximise*.

    ``points`` are ``(x, y)`` pairs, e.g. (compute ratio, F1 change). A point dominates another when its x is not
    larger and its y not smaller, and one of the two is strictly better; equal points do not dominate each other,
    so both stay on the front. Points with a missing or non-finite coordinate are never on the front.
    """
    clean = [(i, finite_number(x), finite_number(y)) for i, (x, y) in enumerate(points)]
    valid = [(i, x, y) for i, x, y in clean if x is not None and y is not None]
    front = []
    for i, x, y in valid:
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y) for j, ox, oy in valid if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _with_kinds(points: pd.DataFrame, x: str) -> pd.DataFrame:
    df = points.copy()
    def finite(v) -> bool:
        return finite_number(v) is not None

    df = df[df[x].map(finite) & df["change"].map(finite)]
    df = df.reset_index(drop=True)

    def series(row) -> str:
        if row["kind"] == "trial":
            if row["state"] == "PRUNED":
                return "trial (pruned early)"
            return "trial (meets budget)" if row["feasible"] else "trial (over budget)"
        return row["name"]

    df["series"] = [series(row) for _, row in df.iterrows()]
    # Trials pruned early carry only an estimate: they never make the front.
    eligible = [s != "trial (pruned early)" for s in df["series"]]
    front = set(pareto_front([(px, py) if ok else (None, None)
                              for px, py, ok in zip(df[x], df["change"], eligible, strict=True)]))
    df["pareto"] = [i in front for i in range(len(df))]
    # Differences in points (x100) read better than fractions.
    df["change_pts"] = df["change"].astype(float) * 100
    df["lo_pts"] = df["change_lo"].map(lambda v: None if finite_number(v) is None else v * 100)
    df["hi_pts"] = df["change_hi"].map(lambda v: None if finite_number(v) is None else v * 100)
    df["on_front"] = df["pareto"].map({True: "yes", False: "no"})
    return df


def _series_scale(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Arms coloured as on every other chart (``arm_scale``), trials green (within budget) or red (over)."""
    arms = [(row["series"], row["kind"] == "baseline") for _, row in df.iterrows() if row["series"] not in TRIAL_SERIES]
    scale = arm_scale(arms)
    domain, colours = list(scale.domain), list(scale.range)
    for name in TRIAL_SERIES:
        if name in set(df["series"]):
            domain.append(name)
            colours.append(TRIAL_SERIES[name])
    return domain, colours


def arm_scale(arms: Sequence[tuple[str, bool]]) -> alt.Scale:
    """One colour per arm, the same on every chart: grey for the baseline, then the arm palette in run order."""
    domain, colours = [], []
    palette = iter(ARM_COLOURS * 4)
    for name, is_baseline in arms:
        if name in domain:
            continue
        domain.append(name)
        colours.append(BASELINE_COLOUR if is_baseline else next(palette))
    return alt.Scale(domain=domain, range=colours)


def _sample_arms(samples: pd.DataFrame) -> list[tuple[str, bool]]:
    pairs = samples[["arm", "strategy"]].drop_duplicates("arm")
    return [(a, s == "baseline") for a, s in zip(pairs["arm"], pairs["strategy"], strict=True)]


def _report_arms(report: dict) -> list[tuple[str, bool]]:
    return [(a["name"], a.get("strategy") == "baseline") for a in report.get("arms") or []]


def tradeoff_chart(points: pd.DataFrame, x: str = "compute_ratio", x_title: str = "Paper TFLOPs ratio (vs baseline)",
                   max_drop: float = 0.01, metric_title: str = "macro-F1", title: str | None = None,
                   width: int | str = "container", height: int = 340) -> alt.LayerChart:
    """Every arm or trial as ``x`` (a cost ratio, lower is cheaper) against the metric change in points.

    Draws the baseline, the budget line (−max_drop), the Pareto front (orange line and rings), the recommended
    schedule (a diamond, labelled) and, for arms, the 95% interval of the change; hovering shows the strategy string.
    """
    df = _with_kinds(points, x)
    y_title = f"{metric_title} change vs baseline (points)"
    budget = -max_drop * 100
    lows = [*df["change_pts"], *df["lo_pts"].dropna(), budget]
    highs = [*df["change_pts"], *df["hi_pts"].dropna(), 0.0]
    span = max(1.0, max(highs) - min(lows))
    y_scale = alt.Scale(domain=[min(lows) - 0.12 * span, max(highs) + 0.12 * span], nice=False)
    x_max = max([1.05, *[v * 1.05 for v in df[x] if finite_number(v) is not None]])
    x_scale = alt.Scale(domain=[0, x_max], nice=False)
    tooltip = [
        alt.Tooltip("name:N", title="arm / trial"),
        alt.Tooltip("strategy:N", title="strategy"),
        alt.Tooltip(f"{x}:Q", title=x_title, format=".3f"),
        alt.Tooltip("change_pts:Q", title=f"{metric_title} change (pts)", format="+.2f"),
        alt.Tooltip("lo_pts:Q", title="95% CI low (pts)", format="+.2f"),
        alt.Tooltip("hi_pts:Q", title="95% CI high (pts)", format="+.2f"),
        alt.Tooltip("on_front:N", title="Pareto front"),
    ]
    domain, colours = _series_scale(df)
    colour = alt.Color("series:N", title=None, scale=alt.Scale(domain=domain, range=colours),
                       legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=520, symbolType="circle",
                                         symbolOpacity=1))
    X = alt.X(f"{x}:Q", title=x_title, scale=x_scale)  # noqa: N806
    Y = alt.Y("change_pts:Q", title=y_title, scale=y_scale)  # noqa: N806
    budget_df = pd.DataFrame({"y": [budget], "text": [f"budget: −{max_drop * 100:.1f} pts"]})
    layers: list[alt.Chart] = [
        alt.Chart(budget_df).mark_rule(color=BUDGET_COLOUR, strokeDash=[6, 4], strokeWidth=2)
        .encode(y=alt.Y("y:Q", scale=y_scale)),
        alt.Chart(budget_df).mark_text(color=BUDGET_COLOUR, align="left", dx=4, dy=-7, fontSize=11)
        .encode(x=alt.value(4), y=alt.Y("y:Q", scale=y_scale), text="text:N"),
        alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="#9e9e9e", strokeWidth=1)
        .encode(y=alt.Y("y:Q", scale=y_scale)),
    ]
    intervals = df[df["lo_pts"].notna() & df["hi_pts"].notna()]
    if len(intervals):
        layers.append(alt.Chart(intervals).mark_rule(strokeWidth=3, opacity=0.45)
                      .encode(x=X, y=alt.Y("lo_pts:Q", scale=y_scale), y2="hi_pts:Q", color=colour))
    front = df[df["pareto"]].sort_values(x)
    if len(front) > 1:
        layers.append(alt.Chart(front).mark_line(color=PARETO_COLOUR, strokeWidth=2, interpolate="step-after",
                                                 opacity=0.8).encode(x=X, y=Y))
    if len(front):
        layers.append(alt.Chart(front).mark_point(size=300, color=PARETO_COLOUR, strokeWidth=2.5, filled=False)
                      .encode(x=X, y=Y, tooltip=tooltip))
    layers.append(alt.Chart(df).mark_circle(size=110, opacity=0.95).encode(x=X, y=Y, color=colour, tooltip=tooltip))
    recommended = df[df["recommended"]]
    if len(recommended):
        layers.append(alt.Chart(recommended).mark_point(shape="diamond", size=420, color="#ffd400", filled=True,
                                                        stroke="#000000", strokeWidth=1).encode(x=X, y=Y,
                                                                                                tooltip=tooltip))
        layers.append(alt.Chart(recommended.assign(text="recommended")).mark_text(
            align="left", dx=13, dy=-12, fontSize=12, fontWeight="bold", color="#333333")
            .encode(x=X, y=Y, text="text:N"))
    chart = alt.layer(*layers).properties(width=width, height=height, autosize=FIT_X)
    if title:
        chart = chart.properties(title=alt.TitleParams(title, anchor="start", fontSize=14))
    return chart


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def latency_chart(samples: pd.DataFrame, field: str = "prefill_ms", title: str = "Prefill latency per sample (ms)",
                  width: int | str = "container") -> alt.Chart:
    """Box plot of a per-sample latency per arm (errored samples left out)."""
    df = samples[samples["error"].isna() & samples[field].notna()][["arm", "strategy", field]]
    order = list(dict.fromkeys(samples["arm"]))
    return alt.Chart(df).mark_boxplot(extent=1.5, size=22).encode(
        y=alt.Y("arm:N", sort=order, title=None, axis=alt.Axis(labelLimit=320)),
        x=alt.X(f"{field}:Q", title=title, scale=alt.Scale(zero=True)),
        color=alt.Color("arm:N", scale=arm_scale(_sample_arms(samples)), legend=None),
        tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip(f"{field}:Q", format=".1f")],
    ).properties(width=width, height=alt.Step(40), autosize=FIT_X)


def per_class_frame(report: dict) -> pd.DataFrame:
    """Long table (label, arm, f1) of the per-class F1 of every arm."""
    rows = []
    for arm in report.get("arms") or []:
        for label, value in (arm.get("f1_per_class") or {}).items():
            rows.append({"label": label, "arm": arm["name"], "f1": value})
    return pd.DataFrame(rows, columns=["label", "arm", "f1"])


def per_class_chart(report: dict, width: int | str = "container") -> alt.Chart:
    df = per_class_frame(report)
    labels = list(report.get("labels") or dict.fromkeys(df["label"]))
    order = [a["name"] for a in report.get("arms") or []]
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("label:N", sort=labels, title="class", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("arm:N", sort=order),
        y=alt.Y("f1:Q", title="F1", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("arm:N", scale=arm_scale(_report_arms(report)), title=None,
                        legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=520)),
        tooltip=["arm:N", "label:N", alt.Tooltip("f1:Q", format=".3f")],
    ).properties(width=width, height=300, autosize=FIT_X)


def tokens_chart(per_layer: pd.DataFrame, width: int | str = "container") -> alt.Chart:
    """Visual tokens each LLM layer processes, one step line per arm."""
    return alt.Chart(per_layer).mark_line(point=True, interpolate="step-after").encode(
        x=alt.X("layer:O", title="LLM decoder layer", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("tokens:Q", title="visual tokens", scale=alt.Scale(zero=True)),
        color=alt.Color("arm:N", scale=arm_scale(_sample_arms(per_layer)), title=None,
                        legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=520)),
        tooltip=["arm:N", "strategy:N", "layer:O", "tokens:Q"],
    ).properties(width=width, height=280, autosize=FIT_X)


# ---------------------------------------------------------------- kept-patch overlays


def grid_side(visual_tokens: Any) -> int | None:
    """The side of the square token grid (14 for 196 tokens), None when the count is not a square."""
    n = finite_number(visual_tokens)
    if n is None or n <= 0 or n != int(n):
        return None
    side = math.isqrt(int(n))
    return side if side * side == int(n) else None


def stage_captions(tokens_per_layer: Sequence[int] | None, stages: int) -> list[str]:
    """One caption per pruning stage, naming the layer it follows (read off where the token count falls)."""
    after = []
    if tokens_per_layer:
        for i in range(1, len(tokens_per_layer)):
            if tokens_per_layer[i] < tokens_per_layer[i - 1]:
                after.append(i)
    return [f"after layer {after[k]}" if k < len(after) else f"stage {k + 1}" for k in range(stages)]


def token_grids(visual_tokens: Any, image_grids: Any = None) -> tuple[list[tuple[int, int, bool]] | None, str | None]:
    """The grids of one sample's visual tokens, in order, as ``(rows, cols, newline)``, or None and why not.

    ``image_grids`` is what the runner stores per sample: ``[rows, cols]`` per image (Qwen: its merged-patch
    grid of the resized image; LLaVA: a square), ``[rows, cols, 1]`` for a grid whose rows each end with a
    newline token (LLaVA-NeXT's high-resolution grid). Runs stored without it get one square grid when the
    token count is a square.
    """
    if image_grids:
        grids = []
        for grid in image_grids if isinstance(image_grids, list | tuple) else []:
            values = [finite_number(v) for v in grid] if isinstance(grid, list | tuple) else []
            if len(values) not in (2, 3) or any(v is None or v != int(v) or v < 0 for v in values):
                return None, f"Stored image grids {image_grids!r} are not [rows, cols] pairs: no patch overlay."
            rows, cols = int(values[0]), int(values[1])
            if rows and cols:
                grids.append((rows, cols, len(values) == 3 and bool(values[2])))
        total = sum(rows * (cols + int(newline)) for rows, cols, newline in grids)
        n = finite_number(visual_tokens)
        if not grids or (n is not None and int(n) != total):
            return None, f"{visual_tokens} visual tokens do not match the stored image grids {image_grids}: no overlay."
        return grids, None
    side = grid_side(visual_tokens)
    if side is None:
        return None, (f"{visual_tokens} visual tokens do not form a square grid (LLaVA-NeXT tiles): "
                      "no patch overlay.")
    return [(side, side, False)], None


def _shape(side: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(side, int):
        return side, side
    rows, cols = side
    return int(rows), int(cols)


def _cell(rows: int, cols: int, cell: int | None) -> int:
    return cell or max(8, 224 // max(rows, cols))


def _square(image: Image.Image, size: int, width: int | None = None) -> Image.Image:
    """``image`` resized to ``width`` x ``size`` pixels (a square ``size`` by default)."""
    return image.convert("RGB").resize((width or size, size), Image.Resampling.BICUBIC)


def overlay(image: Image.Image, side: int | Sequence[int], kept: Sequence[int], window: int = 1,
            cell: int | None = None, outline: tuple[int, int, int] = (255, 214, 0)) -> Image.Image:
    """``image`` resized to a ``side`` grid of tokens: dropped patches dimmed, kept ones outlined.

    ``side`` is the side of a square grid or ``(rows, cols)`` (a dynamic-resolution image: the picture is
    ``cols * cell`` wide and ``rows * cell`` high). ``kept`` holds token indices (row = i // cols, column =
    i % cols); with ``window`` > 1 each index is the top-left patch of a ``window`` × ``window`` pooled block,
    and the whole block is outlined.
    """
    rows, cols = _shape(side)
    cell = _cell(rows, cols, cell)
    height, width = rows * cell, cols * cell
    picture = _square(image, height, width)
    covered = [[False] * cols for _ in range(rows)]
    for index in kept:
        r, c = divmod(int(index), cols)
        for dr in range(window):
            for dc in range(window):
                if 0 <= r + dr < rows and 0 <= c + dc < cols:
                    covered[r + dr][c + dc] = True
    shade = Image.new("RGB", (width, height), (0, 0, 0))
    dimmed = Image.blend(picture, shade, 0.72)
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    for r in range(rows):
        for c in range(cols):
            if covered[r][c]:
                mask_draw.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=255)
    out = Image.composite(picture, dimmed, mask)
    draw = ImageDraw.Draw(out)
    for index in kept:
        r, c = divmod(int(index), cols)
        if r >= rows:
            continue
        h, w = min(window, rows - r), min(window, cols - c)
        draw.rectangle([c * cell, r * cell, (c + w) * cell - 1, (r + h) * cell - 1], outline=outline, width=1)
    return out


def split_by_grid(indices: Sequence[int], grids: Sequence[tuple[int, int, bool]]) -> list[list[int]]:
    """A sample's visual-token indices as cell indices (row * cols + col) of each grid; newline tokens left out."""
    out: list[list[int]] = [[] for _ in grids]
    starts, start = [], 0
    for rows, cols, newline in grids:
        starts.append(start)
        start += rows * (cols + int(newline))
    for index in indices:
        index = int(index)
        for k, (rows, cols, newline) in enumerate(grids):
            local = index - starts[k]
            if 0 <= local < rows * (cols + int(newline)):
                r, c = divmod(local, cols + int(newline))
                if c < cols:
                    out[k].append(r * cols + c)
                break
    return out


def tile_layout(grids: Sequence[tuple[int, int, bool]], image_size: tuple[int, int]) -> tuple[int, int] | None:
    """``(rows, cols)`` of tiles when a sample's grids are the tiles of one image followed by its thumbnail.

    InternVL and SmolVLM cut an image into a rows x cols canvas of equal tiles (row-major) and add a
    downscaled thumbnail (SmolVLM: the global image) last; the runner stores one equal ``[rows, cols]`` grid per
    tile and the thumbnail. So two or more identical grids without newline tokens are read as tiles; the
    arrangement is the factorisation of the tile count closest to the image's aspect ratio, which is what both
    processors choose (InternVL picks the canvas closest to the aspect ratio; SmolVLM splits the image resized
    to whole tiles). None for any other layout (one grid, LLaVA-NeXT's base + newline grid, ...).
    """
    if len(grids) < 2 or grids[0][2] or any(tuple(g) != tuple(grids[0]) for g in grids):
        return None
    tiles = len(grids) - 1
    width, height = image_size
    aspect = width / max(height, 1)
    shapes = [(tiles // cols, cols) for cols in range(1, tiles + 1) if tiles % cols == 0]
    return min(shapes, key=lambda shape: abs(shape[1] / shape[0] - aspect))


def tiled_picture(image: Image.Image, layout: tuple[int, int], grid: tuple[int, int],
                  cells: Sequence[Sequence[int]] | None = None, window: int = 1, cell: int | None = None,
                  background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The tiles of ``image`` in their ``layout`` (rows x cols of tiles), the thumbnail to the right.

    Each tile is a ``grid`` (rows x cols of tokens) of ``cell`` px over its crop of the image resized to the
    whole canvas; tiles are ``tile_gap(cell)`` px apart, the thumbnail (the whole image over one tile's grid)
    ``cell`` px to the right of the last column. With ``cells`` (per tile, then the thumbnail: cell indices of
    kept tokens) each part is drawn as ``overlay`` draws a grid; without, the input.
    """
    tile_rows, tile_cols = layout
    rows, cols = grid
    cell = _cell(tile_rows * rows, tile_cols * cols, cell)
    width, height, gap = cols * cell, rows * cell, tile_gap(cell)
    canvas = _square(image, tile_rows * height, tile_cols * width)
    right = tile_cols * (width + gap) - gap + cell
    out = Image.new("RGB", (right + width, tile_rows * (height + gap) - gap), background)
    for k in range(tile_rows * tile_cols):
        r, c = divmod(k, tile_cols)
        tile = canvas.crop((c * width, r * height, (c + 1) * width, (r + 1) * height))
        picture = tile if cells is None else overlay(tile, grid, cells[k], window=window, cell=cell)
        out.paste(picture, (c * (width + gap), r * (height + gap)))
    thumbnail = _square(image, height, width) if cells is None else overlay(image, grid, cells[-1], window, cell)
    out.paste(thumbnail, (right, 0))
    return out


def tile_gap(cell: int) -> int:
    """Pixels between two tiles in ``tiled_picture``."""
    return max(2, cell // 4)


def pool_factor(strategy: str) -> int | None:
    """The pooling window of a ``pool`` arm (``pilot.pruning.strategies.parse``), None for every other strategy
    and for a strategy this version cannot read."""
    try:
        factor = parse(strategy).pool_factor
    except (TypeError, ValueError):
        return None
    return factor if factor > 1 else None


def kept_overlays(image_path: str | Path, visual_tokens: Any, kept_indices: Any, strategy: str,
                  tokens_per_layer: Sequence[int] | None = None, cell: int | None = None, image_grids: Any = None,
                  ) -> tuple[list[Image.Image], list[str], str | None]:
    """Pictures of what a pruned arm kept of one sample: ``(images, captions, note)``.

    The input (resized to the grid the processor sees: a square for LLaVA, the resized image's rows x cols of
    merged patches for Qwen), then one picture per pruning stage and grid (dimmed = dropped, outlined = kept);
    for a pooling arm one picture per grid of the pooled windows. Tiled images (InternVL, SmolVLM; see
    ``tile_layout``) get one picture per stage instead: the tiles in their rows x cols arrangement and the
    thumbnail to their right (``tiled_picture``). ``image_grids`` are the grids the runner
    stored for the sample (see ``token_grids``); without them the tokens must form one square. ``note``
    explains why there is no picture (no grid, no stored indices, missing image).
    """
    grids, note = token_grids(visual_tokens, image_grids)
    if grids is None:
        return [], [], note
    stages = [list(s) for s in (kept_indices or []) if isinstance(s, list | tuple)]
    if not stages:
        return [], [], "No kept indices stored for this arm (no pruning stage)."
    from pilot.data.images import ImageError, load_image

    try:  # a path, or an image embedded in a Hugging Face dataset
        image = load_image(image_path)
    except (ImageError, OSError, ValueError) as error:
        return [], [], f"Image not available ({error})."
    total = sum(rows * (cols + int(newline)) for rows, cols, newline in grids)
    rows, cols, _ = grids[0]
    factor = pool_factor(strategy)
    layout = tile_layout(grids, image.size)
    if layout is not None:  # InternVL / SmolVLM tiles: one picture of all tiles and the thumbnail per stage
        pictures = [tiled_picture(image, layout, (rows, cols), cell=cell)]
        labels = [f"input: {total} tokens ({layout[0]}×{layout[1]} tiles + thumbnail)"]
        for caption, stage in ([(f"pooled {factor}×{factor}", stages[0])] if factor else
                               zip(stage_captions(tokens_per_layer, len(stages)), stages, strict=True)):
            cells = split_by_grid(stage, grids)
            pictures.append(tiled_picture(image, layout, (rows, cols), cells, window=factor or 1, cell=cell))
            labels.append(f"{caption}: {sum(map(len, cells))} {'tokens' if factor else 'kept'}")
        return pictures, labels, None
    first = _square(image, rows * _cell(rows, cols, cell), cols * _cell(rows, cols, cell))
    pictures, labels = [first], [f"input: {total} tokens"]

    def where(k: int) -> str:
        return f" · grid {k + 1}/{len(grids)}" if len(grids) > 1 else ""

    if factor:
        for k, cells in enumerate(split_by_grid(stages[0], grids)):
            pictures.append(overlay(image, grids[k][:2], cells, window=factor, cell=cell))
            labels.append(f"pooled {factor}×{factor}{where(k)}: {len(cells)} tokens")
        return pictures, labels, None
    for caption, stage in zip(stage_captions(tokens_per_layer, len(stages)), stages, strict=True):
        for k, cells in enumerate(split_by_grid(stage, grids)):
            pictures.append(overlay(image, grids[k][:2], cells, cell=cell))
            labels.append(f"{caption}{where(k)}: {len(cells)} kept")
    return pictures, labels, None
