"""What ``python sample.py`` runs: generate or score from a checkpoint (``sample.py``), and the playground page (``playground/``)."""
