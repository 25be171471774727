"""Running a planned batch: a runner, the per-image worker, and its backends (this process, one
process per device, Ray). Nothing here imports torch or Ray at module level."""
