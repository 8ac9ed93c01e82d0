"""`pilot serve`'s settings come from its flags by field name: every setting has a flag, with the same default."""

from __future__ import annotations

from dataclasses import fields

from pilot.cli import build_parser, serve_settings
from pilot.serve.settings import ServeSettings


def test_every_serve_setting_has_its_flag_with_the_same_default():
    args = vars(build_parser().parse_args(["serve"]))
    names = {f.name for f in fields(ServeSettings)}
    assert names - set(args) == set()  # before: shadow_flush_s and shadow_seed had no flag
    assert set(args) - names == {"command", "func"}
    defaults = ServeSettings()
    for name in names:
        expected = getattr(defaults, name)
        assert args[name] == expected or (name == "allow_dirs" and args[name] is None and expected == []), name
    assert serve_settings(build_parser().parse_args(["serve"])) == defaults


def test_flags_reach_the_settings_by_name():
    args = build_parser().parse_args(["serve", "--shadow-seed", "7", "--shadow-flush-s", "0.2", "--allow-dir", "/a",
                                      "--allow-dir", "/b", "--max-queue", "3"])
    settings = serve_settings(args)
    assert (settings.shadow_seed, settings.shadow_flush_s, settings.allow_dirs, settings.max_queue) == (
        7, 0.2, ["/a", "/b"], 3)
