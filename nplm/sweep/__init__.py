"""Sweeps: what happens around Hydra's multirun, one module per concern.

- folders.py: the sweep folder (what it varies, sweep.json), the jobs' labels, recording refused
  jobs, removing a sweep every job of which was refused, and writing the report when the sweep
  ends, however it ends. (Each job runs through nplm/command.py's job(), as a single run does.)
- vector.py: jobs that differ only in seed and learning rate train together as one stacked model;
  each group's runs are written to their job folders (vectorized.pt) for their jobs to record.
- launcher/: the Hydra launcher that does that (`+launcher=vectorized`), installed as
  `hydra_plugins.nplm_launcher` (Hydra takes launchers from that namespace only).
- report.py: every job of one or more sweeps in a DataFrame; leaderboard, plots, dashboard.

Imports go one way: launcher -> vector -> nplm's training modules; folders -> report.
"""
