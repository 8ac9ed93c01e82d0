"""Blind side-by-side human review of changed answers: tasks from a run, personal review links, judgements from
the dashboard, Label Studio or JSON Lines, and the results (outcome shares clustered by item, the share of all
requests that get worse, Krippendorff's alpha, position bias, flagged reviewers, a budget's verdict).

No torch here: the dashboard imports it. Store queries of the review live in this package.
"""

from pilot.review.results import DEFAULT_MAX_WORSE, review_summary
from pilot.review.tasks import ReviewError

__all__ = ["DEFAULT_MAX_WORSE", "ReviewError", "review_summary"]
