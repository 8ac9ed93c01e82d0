"""Data migrations keep what stored runs mean: FastV arms stored before FastV-as-published."""

import json

import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pilot.pruning import FastV, parse
from pilot.runner import RunSettings
from pilot.store import alembic_config, current_revision, head_revision, normalise_url, upgrade

OLD_ARMS = ["baseline", "fastv:after=2,keep=0.5", "fastv:after=3,keep=0.25,positions=original", "transprune"]


def _store_at_0002_with_an_old_run(url):
    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    # As a run stored at revision 0002 holds them: without the settings added since (no_labels, controls, ...).
    later = ("no_labels", "controls", "matched_to", "task", "image_column", "question_column", "answer_column",
             "dataset_split", "id_column")
    settings = {k: v for k, v in RunSettings(arms=list(OLD_ARMS), max_new_tokens=4).__dict__.items() if k not in later}
    with engine.begin() as connection:
        now = "2026-01-01 00:00:00"
        connection.execute(sa.text(
            "INSERT INTO datasets (id, name, manifest_path, manifest_sha256, size, labels, created_at) "
            "VALUES (1, 'd', '/d/m.csv', :sha, 1, :labels, :now)"), {"sha": "a" * 64, "labels": '["ok"]', "now": now})
        connection.execute(sa.text(
            "INSERT INTO models (id, name, path, config_sha256, model_class, created_at) "
            "VALUES (1, 'demo', 'demo', :sha, 'LlavaForConditionalGeneration', :now)"), {"sha": "a" * 64, "now": now})
        connection.execute(sa.text(
            "INSERT INTO runs (id, name, dataset_id, model_id, settings, settings_sha256, machine, status, created_at) "
            "VALUES (1, 'old', 1, 1, :settings, :sha, '{}', 'completed', :now)"),
            {"settings": json.dumps(settings), "sha": RunSettings(arms=list(OLD_ARMS)).fingerprint(), "now": now})
        for position, arm in enumerate(OLD_ARMS):
            connection.execute(sa.text(
                "INSERT INTO arms (id, run_id, name, strategy, position) VALUES (:id, 1, :name, :strategy, :position)"),
                {"id": position + 1, "name": arm, "strategy": arm, "position": position})
            connection.execute(sa.text(
                "INSERT INTO arm_summaries (arm_id, kpis, updated_at) VALUES (:id, :kpis, :now)"),
                {"id": position + 1, "kpis": json.dumps({"name": arm, "strategy": arm, "f1_macro": 0.5}), "now": now})
    return engine


def _stored(engine):
    with engine.connect() as connection:
        arms = connection.execute(sa.text("SELECT name, strategy FROM arms ORDER BY position")).all()
        kpis = [row[0] for row in connection.execute(sa.text(
            "SELECT s.kpis FROM arm_summaries s JOIN arms a ON a.id = s.arm_id ORDER BY a.position"))]
        settings, sha = connection.execute(sa.text("SELECT settings, settings_sha256 FROM runs")).one()
    return arms, [_json(k) for k in kpis], _json(settings), sha


def _json(value):
    """A JSON column as read back: decoded by the driver (PostgreSQL) or text (plain SQL on SQLite)."""
    return json.loads(value) if isinstance(value, str) else value


def test_fastv_arms_stored_before_keep_their_meaning(fresh_db_url):
    engine = _store_at_0002_with_an_old_run(fresh_db_url)
    upgrade(fresh_db_url)
    assert current_revision(fresh_db_url) == head_revision()
    arms, kpis, settings, sha = _stored(engine)
    expected = ["baseline", "fastv:after=2,keep=0.5,positions=compact,score=next",
                "fastv:after=3,keep=0.25,positions=original,score=next", "transprune"]
    assert [name for name, _ in arms] == [strategy for _, strategy in arms] == expected
    assert [k["strategy"] for k in kpis] == [k["name"] for k in kpis] == expected
    assert parse(expected[1]) == FastV(after=2, keep=0.5, positions="compact", score="next")
    assert [str(parse(s)) for s in expected] == expected  # canonical strings
    assert settings["arms"] == expected
    assert sha == RunSettings.from_dict(settings).fingerprint()  # only the old meaning resumes it
    assert sha != RunSettings(arms=list(OLD_ARMS)).fingerprint()

    command.downgrade(alembic_config(fresh_db_url), "0002")
    arms, kpis, settings, sha = _stored(engine)
    assert [strategy for _, strategy in arms] == OLD_ARMS and settings["arms"] == OLD_ARMS
    assert sha == RunSettings(arms=list(OLD_ARMS)).fingerprint()
    engine.dispose()
