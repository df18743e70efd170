"""What ``medfake promote`` prints: the candidate groups and the decision, one line each."""

from __future__ import annotations

from medfake.core.contract import REGISTERED_MODEL
from medfake.registry.promote import CHALLENGER, CHAMPION, Decision


def format_decision(decision: Decision, name: str = REGISTERED_MODEL, max_groups: int = 10) -> str:
    """The groups table and the decision, as printed by the CLI."""
    d = decision
    order = "higher is better" if d.direction > 0 else "lower is better"
    lines = [f"Candidates by mean {d.metric} over repeats ({order}); one row per model × setup × data digest:",
             f"  {'model':<18} {'runs':>4}  {'mean ± std':<19} {'min–max':<15} {'data':<10} {'setup':<12} best run"]
    for group in d.groups[:max_groups]:
        values = group.values
        lines.append(
            f"  {group.model:<18} {len(group.runs):>4}  {group.mean:.4f} ± {group.std:.4f}    "
            f"{values.min():.4f}–{values.max():.4f}  {group.data_digest[:8]:<10} {group.setup_digest[:10]:<12} "
            f"{group.best.run_id} ({group.best.value:.4f})"
        )
    if len(d.groups) > max_groups:
        lines.append(f"  … {len(d.groups) - max_groups} more groups")
    lines += [f"  note: {note}" for note in d.notes]
    best = d.groups[0]
    lines.append(
        f"Best: {best.model} with mean {d.metric} {best.mean:.4f} ± {best.std:.4f} over {len(best.runs)} run(s); "
        f"its best run {d.chosen.run_id} ({d.metric} {d.chosen.value:.4f}, seed {d.chosen.seed}) is the one registered."
    )
    prefix = "[dry run] would " if d.dry_run else ""
    if d.registered_new:
        what = "register it as a new version" if d.dry_run else f"Registered it as {name} version {d.version}"
        lines.append(f"{prefix}{what}" + (f" and set alias {CHALLENGER}." if d.dry_run else f"; alias {CHALLENGER} → {d.version}."))
    else:
        lines.append(f"Run {d.chosen.run_id} is already {name} version {d.version}: nothing new registered"
                     + ("." if d.dry_run else f"; alias {CHALLENGER} → {d.version}."))
    if d.moved:
        target = "the new version" if d.version is None else f"version {d.version}"
        lines.append(f"{prefix}{'move' if d.dry_run else 'Moved'} alias {CHAMPION} "
                     f"{'from version ' + d.champion_before + ' ' if d.champion_before else ''}to {target}: {d.reason}.")
    else:
        stays = f"stays on version {d.champion_before}" if d.champion_before else "is not set"
        lines.append(f"Alias {CHAMPION} {stays}: {d.reason}.")
    if d.champion_after and not d.dry_run:
        lines.append(f"Serve it: mlflow models serve -m models:/{name}@{CHAMPION} --env-manager local -p 5001")
    return "\n".join(lines)
