"""``pilot serve``: an OpenAI-compatible chat-completions endpoint that serves one arm (a pruning schedule, or the
baseline) with dynamic batching, and optionally a shadow A/B that re-runs a sampled share of live requests through
the other arm and stores both answers as a pilot run. See ``pilot.serve.server`` for how the parts fit."""

from pilot.serve.settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ServeSettings"]
