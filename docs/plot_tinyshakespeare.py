"""Draw the README's plot: stateful val loss against training wall time, one line per run.

    python docs/plot_tinyshakespeare.py "5-minute preset=outputs/.../run1" "15-minute preset=..." \
        --out docs/tinyshakespeare_val_loss.png

Each run dir is a training run with the CSV logger (``logger=csv``); a point is a validation:
its ``val/loss_stateful`` at the time logged at or just after that step. The figure in the
README was drawn from ``time/elapsed_s`` (wall time since fitting began, validation included),
which its runs logged; runs logged by ``rnnlm.training.callbacks.TrainThroughput`` have ``train/time``
(training only, validation left out), which is read when ``time/elapsed_s`` is absent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rnnlm.report import find_metrics_csvs, load_curve, pyplot

# Reference figures from the issue tracker (nats/char on the same split), and our targets.
REFERENCES = {
    "nanoGPT CPU recipe, 5 min: 1.593": (1.593, ":"),
    "nanoGPT 6-layer GPT, A100, ~3 min: 1.470": (1.4697, ":"),
    "target, 5 min: 1.45": (1.45, "--"),
    "target, 15 min: 1.42": (1.42, "--"),
}


def stateful_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(minutes of training, stateful val loss) at each validation during fitting.

    A validation's metrics carry the step before the next logged time; the re-validation of the best checkpoint after fitting, one step later than any
    training step, is left out.
    """
    paths = find_metrics_csvs(run_dir)
    elapsed = load_curve(paths, "time/elapsed_s") or load_curve(paths, "train/time")
    train_steps = [step for step, _ in load_curve(paths, "train/loss")]
    curve = []
    for step, loss in load_curve(paths, "val/loss_stateful"):
        later = [seconds for s, seconds in elapsed if s >= step]
        if train_steps and step <= train_steps[-1] and later:
            curve.append((later[0] / 60, loss))
    if not curve:
        raise SystemExit(f"error: no val/loss_stateful with train/time in {run_dir}/csv; train with logger=csv")
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("docs/tinyshakespeare_val_loss.png"))
    parser.add_argument("--machine", default="2-core CPU")
    args = parser.parse_args()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=100)
    for spec in args.runs:
        label, _, run_dir = spec.rpartition("=")  # the label may hold "=" (experiment=...)
        minutes, losses = zip(*stateful_curve(Path(run_dir)))
        ax.plot(minutes, losses, marker="o", markersize=3, label=f"{label} (best {min(losses):.4f})")
    for text, (value, style) in REFERENCES.items():
        ax.axhline(value, color="grey", linestyle=style, linewidth=0.8)
        ax.text(0.99, value + 0.003, text, fontsize=7, color="grey", ha="right", transform=ax.get_yaxis_transform())
    ax.set(xlabel=f"training wall time (minutes, {args.machine})", ylabel="val loss, stateful (nats/char)",
           title="tiny-shakespeare, last 10% as validation", ylim=(1.40, 1.70))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
