"""Plumbing a first reading can skip: one-line errors, atomic files, the option rules, run dirs, the entry points' wrapper."""
