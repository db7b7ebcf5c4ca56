"""What ``python train.py`` runs: ``train(cfg)``, its callbacks, checkpoint files, resuming, precision."""
