"""Step caches that skip transformer work between steps: ``step_cache`` (First Block Cache and MagCache per run,
reset every run, on every transformer) and ``mag_cache`` (MagCache's calibration curves)."""
