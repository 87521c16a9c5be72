"""The foundation every other room stands on: the toolkit's errors and their exit codes, the typed
config loader, atomic file and folder writers, the run log, Accelerate set-up, resumable
checkpoints, run folders and folder locks. Imports nothing else of the toolkit."""
