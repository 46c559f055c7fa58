# `python -m vfm_lab` runs the CLI on import: keep doctest collection away from it.
collect_ignore = ["vfm_lab/__main__.py"]
