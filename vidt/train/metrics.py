"""What a run reports: metrics.csv, TensorBoard events and learning_curve.png.

Rows are kept in memory (one per evaluation: a few hundred at most) and the CSV is rewritten
atomically each time, so a resumed run restores exactly the rows of its checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from vidt.files import atomic_write_bytes, atomic_write_text

COLUMNS = [
    "phase", "iteration", "online_env_steps", "actor_updates", "critic_updates", "wall_time_s",
    "eval_return_mean", "eval_return_std", "eval_normalized_score",
    "actor_loss", "critic_loss", "supervised_loss", "rl_loss", "q_mean", "entropy",
    "temperature", "lr", "anchor_loss",
]


class LossMeter:
    """Running means of the update infos since the last row."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, info: dict) -> None:
        for k, v in info.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


class MetricsLog:
    def __init__(self, run_dir: Path, title: str, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir, self.title = Path(run_dir), title
        self.rows: list[dict] = []
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def add_row(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in COLUMNS})
        self.write_csv()
        if self.writer is not None:
            step = int(row["actor_updates"])
            for k in COLUMNS[5:]:
                v = row.get(k, "")
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{k}", v, step)
            self.writer.add_scalar("online_env_steps", row["online_env_steps"], step)
            self.writer.flush()
        self.plot()

    def write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(buf.getvalue(), self.run_dir / "metrics.csv")

    def plot(self) -> None:
        """learning_curve.png: eval return against online env steps (Agg, no global state)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        pts = [(r["online_env_steps"], r["eval_return_mean"], r["eval_return_std"])
               for r in self.rows if isinstance(r["eval_return_mean"], (int, float))]
        if not pts:
            return
        x, m, s = (list(v) for v in zip(*pts))
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(x, m, marker="o", ms=3)
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
        ax.set_xlabel("online env steps")
        ax.set_ylabel("eval return (mean ± std)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(buf.getvalue(), self.run_dir / "learning_curve.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v):
    if isinstance(v, float):
        return repr(v)  # round-trips exactly, so resumed and uninterrupted CSVs compare equal
    return v
