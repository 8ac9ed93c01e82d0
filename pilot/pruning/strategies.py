"""Pruning strategies: small frozen dataclasses, validated on construction, written as strings.

Layers are 1-indexed as in the paper: ``prune_after=(7, 9, 12)`` drops tokens after the 7th,
9th and 12th decoder layer. ``keep`` is a fraction of the sample's *original* visual tokens.

String forms (canonical forms round-trip: ``str(parse(s)) == s``)::

    baseline
    transprune                                  paper schedule, mapped to the model's depth
    transprune:prune_after=7/9/12,keep=0.875/0.625/0.125[,accumulate_from=7][,alpha=0.5]
               [,direction=signed|absolute][,positions=compact|original]
    fastv:after=2,keep=0.5[,positions=compact|original][,score=own|next]
    pdrop                                       PyramidDrop's stages (8/16/24 of 32), mapped to depth
    pdrop:prune_after=8/16/24,ratio=0.5[,positions=...]
    divprune:keep=0.25                          before the LM, greedy max-min cosine diversity per image
    random                                      paper schedule, mapped to the model's depth
    random:prune_after=7/9/12,keep=0.875/0.625/0.125[,seed=0][,positions=...]
    pool:factor=2

Positions left out: the strategy's authors' numbering where the model family defines it (FastV
keeps original positions, PDrop renumbers), else the family's default (see the families'
adapters: compact for LLaVA, original for M-RoPE models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

PAPER_DEPTH = 32
PAPER_PRUNE_AFTER = (7, 9, 12)
PAPER_KEEP = (0.875, 0.625, 0.125)
PDROP_PRUNE_AFTER = (8, 16, 24)  # the end of the first three of four equal stages of a 32-layer LM
SCORE_LAYERS = ("own", "next")
POSITION_MODES = ("compact", "original")
DIRECTIONS = ("signed", "absolute")


def kept_count(n_visual: int, keep: float) -> int:
    """Visual tokens a sample with ``n_visual`` tokens keeps at ratio ``keep`` (at least one)."""
    if n_visual <= 0:
        return 0
    return max(1, min(n_visual, math.floor(n_visual * keep + 0.5)))


def map_layers_to_depth(layers: tuple[int, ...], depth: int, from_depth: int = PAPER_DEPTH):
    """Proportional mapping of 1-indexed layers from a ``from_depth`` model to a ``depth`` one.

    Rule: ``round_half_up(layer * depth / from_depth)``, at least 1, then bumped so the layers
    stay strictly increasing; every layer must leave at least one decoder layer after it.
    """
    mapped: list[int] = []
    for layer in layers:
        value = max(1, math.floor(layer * depth / from_depth + 0.5))
        if mapped and value <= mapped[-1]:
            value = mapped[-1] + 1
        mapped.append(value)
    if mapped and mapped[-1] >= depth:
        raise ValueError(
            f"cannot map layers {layers} of a {from_depth}-layer model onto {depth} layers: "
            f"the model is too shallow for {len(layers)} pruning stages; give an explicit schedule"
        )
    return tuple(mapped)


def _fmt_float(value: float) -> str:
    return f"{value:.10g}"


def _fmt_tuple(values: tuple) -> str:
    return "/".join(_fmt_float(v) if isinstance(v, float) else str(v) for v in values)


def _check_schedule(prune_after: tuple[int, ...], keep: tuple[float, ...], what: str) -> None:
    if len(prune_after) == 0:
        raise ValueError(f"{what}: prune_after is empty; give at least one layer, e.g. prune_after=(7,)")
    if len(prune_after) != len(keep):
        raise ValueError(
            f"{what}: prune_after has {len(prune_after)} layers but keep has {len(keep)} ratios; "
            "give one keep ratio per pruning layer"
        )
    for layer in prune_after:
        if not isinstance(layer, int) or layer < 1:
            raise ValueError(f"{what}: prune_after layer {layer!r} must be an integer >= 1 (1-indexed)")
    if any(b <= a for a, b in zip(prune_after, prune_after[1:], strict=False)):
        raise ValueError(f"{what}: prune_after {prune_after} must be strictly increasing")
    for ratio in keep:
        if not (0.0 < ratio <= 1.0):
            raise ValueError(f"{what}: keep ratio {ratio} must be in (0, 1]; it is a fraction kept")
    if any(b > a for a, b in zip(keep, keep[1:], strict=False)):
        raise ValueError(
            f"{what}: keep ratios {keep} grow; each stage keeps a fraction of the original tokens, "
            "so ratios must be non-increasing"
        )


@dataclass(frozen=True)
class Strategy:
    """Interface shared by every strategy.

    ``prune_after``/``keep`` give the in-LLM stages (may be empty); ``pool_factor`` > 1 pools the
    visual grid before the LLM. ``resolve(depth)`` returns the strategy for a model with
    ``depth`` decoder layers, or raises ValueError if it does not fit.
    """

    kind: ClassVar[str] = ""
    # The position numbering the strategy's authors use, when ``positions`` is not given.
    preferred_positions: ClassVar[str | None] = None
    # In-LLM scoring: which rows query ("instruction": the text after the last image; "last":
    # the prompt's last token; None: no attention score) and with which layer's projections
    # ("next": the layer after the stage; "own": the stage's layer, on its own input).
    score_queries: ClassVar[str | None] = None
    # Stage ratios count the tokens still present (PyramidDrop) instead of the original ones.
    keep_of_present: ClassVar[bool] = False

    @property
    def stages(self) -> tuple[tuple[int, float], ...]:
        return ()

    @property
    def before_lm_keep(self) -> float | None:
        """Fraction of each image's visual tokens selected before the LLM (DivPrune), or None."""
        return None

    @property
    def score_layer(self) -> str:
        """The layer whose projections score the tokens: "next" (after the stage) or "own"."""
        return "next"

    @property
    def pool_factor(self) -> int:
        return 1

    @property
    def accumulate_start(self) -> int | None:
        """First 1-indexed layer whose TTV is accumulated, or None if TTV is not needed."""
        return None

    @property
    def position_mode(self) -> str | None:
        """How positions are numbered after a drop: "compact" (renumbered), "original", or None:
        the model family's default (compact for LLaVA, original for M-RoPE families)."""
        return getattr(self, "positions", None)

    def resolve(self, depth: int) -> Strategy:
        for layer, _ in self.stages:
            if layer >= depth:
                raise ValueError(
                    f"{self}: prune layer {layer} is beyond a {depth}-layer model (a stage must "
                    f"leave layers after it; use layers 1..{depth - 1}"
                    + (", or the bare name to map the paper schedule)" if self.kind in
                       ("transprune", "random", "pdrop") else ")")
                )
        return self


@dataclass(frozen=True)
class NoPrune(Strategy):
    kind: ClassVar[str] = "baseline"

    def __str__(self) -> str:
        return "baseline"


@dataclass(frozen=True)
class TransPrune(Strategy):
    """TransPrune: score = alpha * TTV + (1 - alpha) * IGA; keep top-k at each stage.

    At each stage k is ``keep`` x the sample's original visual tokens, or, in the score-mass
    mode (``mass`` instead of ``keep``), the fewest tokens whose scores (normalised over the
    tokens present) sum to at least ``mass``: easy images then keep fewer tokens than hard ones.
    ``paper_schedule=True`` (the bare string ``transprune``) means the paper's 32-layer schedule,
    mapped proportionally onto the model's depth when attached (see ``for_depth``).
    """

    kind: ClassVar[str] = "transprune"
    score_queries: ClassVar[str | None] = "instruction"
    prune_after: tuple[int, ...] = PAPER_PRUNE_AFTER
    keep: tuple[float, ...] | None = None  # None: the paper's ratios, unless ``mass`` is given
    accumulate_from: int | None = None  # None: the first prune layer (7 for the paper schedule)
    alpha: float = 0.5
    direction: str = "signed"
    positions: str | None = None  # None: the model family's default
    paper_schedule: bool = field(default=False, repr=False)
    mass: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_after", tuple(int(v) for v in self.prune_after))
        if self.mass is not None:
            if self.keep is not None:
                raise ValueError("transprune: give keep (fractions) or mass (score thresholds), not both")
            object.__setattr__(self, "mass", tuple(float(v) for v in self.mass))
            # A mass threshold is a fraction of the score, so the same checks apply as to keep ratios,
            # except that it need not fall: each stage's scores are normalised over the tokens present.
            _check_schedule(self.prune_after, tuple(sorted(self.mass, reverse=True)), "transprune (mass)")
            if len(self.mass) != len(self.prune_after):
                raise ValueError("transprune: give one mass threshold per pruning layer")
        else:
            object.__setattr__(self, "keep", tuple(float(v) for v in (self.keep or PAPER_KEEP)))
            _check_schedule(self.prune_after, self.keep, "transprune")
        if self.accumulate_from is None:
            object.__setattr__(self, "accumulate_from", self.prune_after[0])
        if not 1 <= self.accumulate_from <= self.prune_after[0]:
            raise ValueError(
                f"transprune: accumulate_from={self.accumulate_from} must be between 1 and the "
                f"first prune layer {self.prune_after[0]}: TTV has to be accumulated before it is used"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"transprune: alpha={self.alpha} must be in [0, 1]")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"transprune: direction={self.direction!r}; use one of {DIRECTIONS}")
        _check_positions(self.positions, "transprune")

    @classmethod
    def for_depth(cls, depth: int, **overrides) -> TransPrune:
        """The paper's schedule mapped onto a ``depth``-layer LLM (see ``map_layers_to_depth``)."""
        prune_after = map_layers_to_depth(PAPER_PRUNE_AFTER, depth)
        return cls(prune_after=prune_after, keep=PAPER_KEEP, **overrides)

    @property
    def stages(self) -> tuple[tuple[int, float | None], ...]:
        """(layer, keep ratio) per stage; the ratio is None in the score-mass mode."""
        return tuple(zip(self.prune_after, self.keep or (None,) * len(self.prune_after), strict=True))

    @property
    def accumulate_start(self) -> int | None:
        return self.accumulate_from

    def resolve(self, depth: int) -> Strategy:
        if self.paper_schedule:
            return TransPrune.for_depth(
                depth, alpha=self.alpha, direction=self.direction, positions=self.positions
            )
        return super().resolve(depth)

    def __str__(self) -> str:
        extras = _extras(self, {"alpha": 0.5, "direction": "signed", "positions": None})
        if self.paper_schedule:
            return "transprune" + (":" + ",".join(extras) if extras else "")
        schedule = f"mass={_fmt_tuple(self.mass)}" if self.mass else f"keep={_fmt_tuple(self.keep)}"
        parts = [f"prune_after={_fmt_tuple(self.prune_after)}", schedule]
        if self.accumulate_from != self.prune_after[0]:
            parts.append(f"accumulate_from={self.accumulate_from}")
        return "transprune:" + ",".join(parts + extras)


@dataclass(frozen=True)
class FastV(Strategy):
    """FastV as published: after layer ``after``, keep the visual tokens that the prompt's last
    token attends to most in the attention map layer ``after`` itself computed (its own input,
    heads averaged); kept tokens keep their original positions.

    ``score="next"`` scores with the next layer's projections instead (what this project did
    before; stored runs from then say so), ``positions="compact"`` renumbers.
    """

    kind: ClassVar[str] = "fastv"
    preferred_positions: ClassVar[str | None] = "original"
    score_queries: ClassVar[str | None] = "last"
    after: int = 2
    keep: float = 0.5
    positions: str | None = None  # None: original (the authors'), where the family allows it
    score: str = "own"  # the attention map of the stage's own layer ("own") or the next one's

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", float(self.keep))
        _check_schedule((int(self.after),), (self.keep,), "fastv")
        _check_positions(self.positions, "fastv")
        if self.score not in SCORE_LAYERS:
            raise ValueError(f"fastv: score={self.score!r}; use one of {SCORE_LAYERS}")

    @property
    def score_layer(self) -> str:
        return self.score

    @property
    def stages(self) -> tuple[tuple[int, float], ...]:
        return ((self.after, self.keep),)

    def __str__(self) -> str:
        parts = [f"after={self.after}", f"keep={_fmt_float(self.keep)}"]
        return "fastv:" + ",".join(parts + _extras(self, {"positions": None, "score": "own"}))


@dataclass(frozen=True)
class PDrop(Strategy):
    """PyramidDrop: after each of ``prune_after`` keep ``ratio`` of the visual tokens still
    present (0.5: 50%, 25%, 12.5% of the original after three stages), top-k by the attention
    the prompt's last token pays them under the next layer's projections; positions renumbered
    after each drop, as the authors' code does. The bare ``pdrop`` maps the paper's 8/16/24 of
    32 layers onto the model's depth.
    """

    kind: ClassVar[str] = "pdrop"
    preferred_positions: ClassVar[str | None] = "compact"
    score_queries: ClassVar[str | None] = "last"
    keep_of_present: ClassVar[bool] = True
    prune_after: tuple[int, ...] = PDROP_PRUNE_AFTER
    ratio: float = 0.5
    positions: str | None = None  # None: compact (the authors'), where the family allows it
    paper_schedule: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_after", tuple(int(v) for v in self.prune_after))
        object.__setattr__(self, "ratio", float(self.ratio))
        _check_schedule(self.prune_after, (self.ratio,) * len(self.prune_after), "pdrop")
        _check_positions(self.positions, "pdrop")

    @property
    def stages(self) -> tuple[tuple[int, float], ...]:
        """(layer, ratio): each stage keeps ``ratio`` of the tokens present before it."""
        return tuple((layer, self.ratio) for layer in self.prune_after)

    def resolve(self, depth: int) -> Strategy:
        if self.paper_schedule:
            return PDrop(prune_after=map_layers_to_depth(PDROP_PRUNE_AFTER, depth), ratio=self.ratio,
                         positions=self.positions)
        return super().resolve(depth)

    def __str__(self) -> str:
        extras = _extras(self, {"positions": None})
        if self.paper_schedule:
            ratio = [] if self.ratio == 0.5 else [f"ratio={_fmt_float(self.ratio)}"]
            return "pdrop" + (":" + ",".join(ratio + extras) if ratio or extras else "")
        parts = [f"prune_after={_fmt_tuple(self.prune_after)}", f"ratio={_fmt_float(self.ratio)}"]
        return "pdrop:" + ",".join(parts + extras)


@dataclass(frozen=True)
class DivPrune(Strategy):
    """DivPrune: before the LLM, per image, keep ``keep`` of its visual tokens chosen greedily to
    be as different from each other as possible (max-min cosine distance); no attention, no text.
    The shorter sequence is numbered compactly, as when the image gave fewer tokens."""

    kind: ClassVar[str] = "divprune"
    preferred_positions: ClassVar[str | None] = "compact"
    keep: float = 0.25
    positions: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", float(self.keep))
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"divprune: keep={self.keep} must be in (0, 1]; it is the fraction of each image kept")
        _check_positions(self.positions, "divprune")

    @property
    def before_lm_keep(self) -> float | None:
        return self.keep

    def __str__(self) -> str:
        return "divprune:" + ",".join([f"keep={_fmt_float(self.keep)}", *_extras(self, {"positions": None})])


@dataclass(frozen=True)
class RandomPrune(Strategy):
    """Control arm: the same schedule as TransPrune, tokens chosen at random (seeded).

    The draw depends on (seed, stage, visual-token count) only, so a sample keeps the same tokens
    whatever batch it is in.
    """

    kind: ClassVar[str] = "random"
    prune_after: tuple[int, ...] = PAPER_PRUNE_AFTER
    keep: tuple[float, ...] = PAPER_KEEP
    seed: int = 0
    positions: str | None = None  # None: the model family's default
    paper_schedule: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_after", tuple(int(v) for v in self.prune_after))
        object.__setattr__(self, "keep", tuple(float(v) for v in self.keep))
        _check_schedule(self.prune_after, self.keep, "random")
        _check_positions(self.positions, "random")

    @property
    def stages(self) -> tuple[tuple[int, float], ...]:
        return tuple(zip(self.prune_after, self.keep, strict=True))

    def resolve(self, depth: int) -> Strategy:
        if self.paper_schedule:
            return RandomPrune(
                prune_after=map_layers_to_depth(PAPER_PRUNE_AFTER, depth),
                keep=PAPER_KEEP,
                seed=self.seed,
                positions=self.positions,
            )
        return super().resolve(depth)

    def __str__(self) -> str:
        extras = _extras(self, {"seed": 0, "positions": None})
        if self.paper_schedule:
            return "random" + (":" + ",".join(extras) if extras else "")
        parts = [f"prune_after={_fmt_tuple(self.prune_after)}", f"keep={_fmt_tuple(self.keep)}"]
        return "random:" + ",".join(parts + extras)


@dataclass(frozen=True)
class TokenPool(Strategy):
    """Control arm: average-pool the visual token grid by ``factor`` before the LLM."""

    kind: ClassVar[str] = "pool"
    factor: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"pool: factor={self.factor!r} must be an integer >= 2 (2 turns 24x24 into 12x12)")

    @property
    def pool_factor(self) -> int:
        return self.factor

    def __str__(self) -> str:
        return f"pool:factor={self.factor}"


def _check_positions(positions: str | None, what: str) -> None:
    if positions is not None and positions not in POSITION_MODES:
        raise ValueError(f"{what}: positions={positions!r}; use one of {POSITION_MODES} (or leave it out for "
                         "the model family's default)")


def _extras(strategy: Strategy, defaults: dict) -> list[str]:
    out = []
    for name, default in defaults.items():
        value = getattr(strategy, name)
        if value != default:
            out.append(f"{name}={_fmt_float(value) if isinstance(value, float) else value}")
    return out


_FIELDS: dict[str, dict[str, type]] = {
    "transprune": {"prune_after": tuple[int], "keep": tuple[float], "mass": tuple[float], "accumulate_from": int,
                   "alpha": float, "direction": str, "positions": str},
    "fastv": {"after": int, "keep": float, "positions": str, "score": str},
    "pdrop": {"prune_after": tuple[int], "ratio": float, "positions": str},
    "divprune": {"keep": float, "positions": str},
    "random": {"prune_after": tuple[int], "keep": tuple[float], "seed": int, "positions": str},
    "pool": {"factor": int},
    "baseline": {},
}
_CLASSES = {"transprune": TransPrune, "fastv": FastV, "pdrop": PDrop, "divprune": DivPrune, "random": RandomPrune,
            "pool": TokenPool, "baseline": NoPrune}
_ALIASES = {"none": "baseline", "noprune": "baseline", "tokenpool": "pool", "randomprune": "random"}


def _convert(kind: str, name: str, raw: str, typ):
    try:
        if typ == tuple[int]:
            return tuple(int(v) for v in raw.split("/"))
        if typ == tuple[float]:
            return tuple(float(v) for v in raw.split("/"))
        return typ(raw)
    except ValueError:
        raise ValueError(f"{kind}: cannot read {name}={raw!r} (expected {typ})") from None


def parse(text: str | Strategy) -> Strategy:
    """Parse a strategy string such as ``fastv:after=2,keep=0.5``; strategies pass through."""
    if isinstance(text, Strategy):
        return text
    text = text.strip()
    kind, _, rest = text.partition(":")
    kind = _ALIASES.get(kind.lower(), kind.lower())
    if kind not in _CLASSES:
        raise ValueError(
            f"unknown strategy {text!r}; use one of: baseline, transprune[:...], fastv[:...], pdrop[:...], "
            "divprune[:keep=F], random[:...], pool[:factor=N]"
        )
    fields = _FIELDS[kind]
    kwargs: dict = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, raw = item.partition("=")
        if not eq or name not in fields:
            known = ", ".join(fields) or "none"
            raise ValueError(f"{kind}: unknown setting {item!r} in {text!r}; settings: {known}")
        if name in kwargs:
            raise ValueError(f"{kind}: setting {name!r} given twice in {text!r}")
        kwargs[name] = _convert(kind, name, raw, fields[name])
    if kind == "pdrop":
        if ("prune_after" in kwargs) != ("ratio" in kwargs) and "prune_after" in kwargs:
            raise ValueError("pdrop: an explicit prune_after needs its ratio (e.g. prune_after=8/16/24,ratio=0.5)")
        if "prune_after" not in kwargs:
            kwargs["paper_schedule"] = True
    if kind in ("transprune", "random"):
        ratios = "keep" in kwargs or "mass" in kwargs
        has_schedule = "prune_after" in kwargs or ratios
        if has_schedule and not ("prune_after" in kwargs and ratios):
            raise ValueError(f"{kind}: give both prune_after and keep (or mass), or neither (paper schedule)")
        if not has_schedule:
            if "accumulate_from" in kwargs:
                raise ValueError(f"{kind}: accumulate_from needs an explicit prune_after/keep schedule")
            kwargs["paper_schedule"] = True
    return _CLASSES[kind](**kwargs)
