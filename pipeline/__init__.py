"""The stage layer: one Typer command per pipeline stage."""

import time

STARTED = time.time()  # the command's start, before its imports (torch alone takes 2-3 s)
