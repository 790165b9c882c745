"""The typer application. Importing it must stay cheap: no torch, pyarrow or numpy here."""
