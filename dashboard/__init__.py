"""The executive KPI dashboard (Streamlit): ``pilot dashboard`` or ``streamlit run dashboard/app.py -- --db URL``.

``dashboard.data`` (store access, KPIs arranged for display), ``dashboard.charts`` (Altair charts, Pareto front,
kept-patch overlays), ``dashboard.export`` (HTML and CSV reports) and ``dashboard.launch`` import no torch.
"""
