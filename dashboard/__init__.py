"""The executive KPI dashboard (Streamlit): ``pilot dashboard`` or ``streamlit run dashboard/app.py -- --db URL``.

``dashboard.app`` is the page; below it, one module per job, none of which imports Streamlit or torch:
``dashboard.store`` (the read-only connection, the runs and their reports), ``dashboard.data`` (a run's results
sample by sample: disagreements, worst-hit answers, word diffs, images), ``dashboard.verdicts`` (the budget's
metric, verdicts, KPI tiles, trade-off points), ``dashboard.costs`` (monthly GPU cost), ``dashboard.studies``
(tuning studies and their Optuna trials), ``dashboard.formatting`` (numbers as the page shows them),
``dashboard.charts`` (Altair charts, Pareto front, kept-patch overlays), ``dashboard.export`` (HTML and CSV
reports) and ``dashboard.launch`` (``pilot dashboard``).
"""
