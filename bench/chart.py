"""The picture of the comparison: writes/s and p99 latency against connections,
for this system and the plain Nameko pipeline (and the A/B's before, if run)."""

from pathlib import Path


def draw(compare: dict, path: Path, title: str) -> Path | None:
    """Write a PNG of ``compare`` (``results["compare"]``) to ``path``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"plain": ("tab:gray", "--", "s"), "system": ("tab:blue", "-", "o")}
    for name, by_c in compare.items():
        color, line, marker = styles.get(name, ("tab:orange", ":", "^"))
        label = {"plain": "plain Nameko pipeline", "system": "this system"}.get(name, name)
        cs = sorted(by_c, key=int)
        x = [int(c) for c in cs]
        rate_ax.plot(
            x, [by_c[c]["writes_per_sec"]["median"] for c in cs], line, color=color, marker=marker, label=label
        )
        p99_ax.plot(x, [by_c[c]["p99_ms"]["median"] for c in cs], line, color=color, marker=marker, label=label)
    for ax, ylabel in (
        (rate_ax, "writes/s (answered 201 and applied in score)"),
        (p99_ax, "p99 of accepted writes (ms)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32, 256], ["1", "8", "32", "256"])
        ax.set_xlabel("connections")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    p99_ax.set_yscale("log")
    rate_ax.legend()
    return save(fig, path, title)


def save(fig, path: Path, title: str) -> Path:
    """Title ``fig``, write it to ``path`` as a PNG and free it; the bench's pictures all end here."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
