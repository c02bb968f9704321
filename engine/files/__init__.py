"""How the app writes files: ``atomic`` (whole or absent: temp file, fsync, rename; a run's files as one set with a
journal, recovered at the next start; a full disk named with the flag that moves the folder)."""
