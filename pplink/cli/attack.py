"""``pplink attack …``: attack Bloom-filter encodings as the coordinator could, and score the attack.

For auditors and agencies who want to see what the encodings leak. By default every command runs
on synthetic data made on the fly (``--people``, ``--seed``) under a named encoding (``--setting``)
or an agreement's identifier section (``--agreement``). ``frequency`` and ``pattern`` also run on
a real encodings file with a public list (``--encodings``, ``--public``), scored when the agency
supplies the truth (``--truth``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pplink.cli.options import FORMAT_OPTION, existing_file

if TYPE_CHECKING:
    from pplink.agreement import IdentifierSchema
    from pplink.lab.attacks import AttackOutcome

__all__ = ["attack", "render_outcomes"]

_SETTINGS = ("abf-given", "abf-surname", "clk-heavy-surname", "default", "none", "xor1", "flip0.02", "flip0.05",
             "salt-yob", "salt-yob+flip0.02", "salt-yob+xor1")


def _named_settings() -> dict[str, IdentifierSchema]:
    from pplink.lab.attacks import attack_settings, default_identifiers, hardening_variants

    named = {k: v for k, v in attack_settings().items() if k != "clk-plain"}
    named.update(hardening_variants(default_identifiers()))
    return named


def _synth_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--agreement", "agreement_path", type=existing_file, default=None,
                           help="Use this agreement's identifier section (its columns must be those of "
                                "`pplink synth`) instead of --setting.")(command)
    command = click.option("--setting", type=click.Choice(_SETTINGS), default="default", show_default=True,
                           help="Named encoding: weak ones (abf-*, clk-heavy-surname), the defaults, "
                                "or a hardening variant of the default fields.")(command)
    command = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Seed for the synthetic data, keys and attacker database.")(command)
    command = click.option("--people", type=click.IntRange(min=100), default=24_000, show_default=True,
                           help="Synthetic population; about 0.85 encoded records per person "
                                "(24,000 people: about 20,000 records).")(command)
    return command


def _identifiers(setting: str, agreement_path: Path | None) -> tuple[str, IdentifierSchema]:
    if agreement_path is None:
        return setting, _named_settings()[setting]
    from pplink.agreement import load_agreement

    return agreement_path.name, load_agreement(agreement_path).identifiers


def _file_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--truth", "truth_path", type=existing_file, default=None,
                           help="With --encodings: CSV (header `value`) of the target's true value per "
                                "encoding, in file order, to score the attack.")(command)
    command = click.option("--public", "public_path", type=existing_file, default=None,
                           help="With --encodings: the attacker's public list, CSV `value,count`.")(command)
    command = click.option("--encodings", "encodings_path", type=existing_file, default=None,
                           help="Attack this .enc file (needs --agreement and --public) instead of "
                                "synthetic data.")(command)
    return command


@click.group("attack")
def attack() -> None:
    """Attack Bloom-filter encodings the way the coordinator could, and measure the damage.

    The attacker holds every agency's encodings and the agreement, not the secret. Each command
    prints how many records the attack re-identified (rate) and how many of its guesses were
    right (precision). See docs/hardening.md for what the figures mean and the defaults they chose.
    """


def _real_file_run(kind: str, encodings_path: Path, agreement_path: Path | None, public_path: Path | None,
                   truth_path: Path | None, target: str, top_n: int, cluster_threshold: float) -> list[AttackOutcome]:
    from pplink.agreement import load_agreement
    from pplink.encfile import read_encodings
    from pplink.errors import UsageError
    from pplink.lab.attacks import frequency_attack, pattern_attack, read_public_list, read_truth_column

    if agreement_path is None or public_path is None:
        raise UsageError("--encodings needs --agreement (to verify the file) and --public (the attacker's list)")
    agreement = load_agreement(agreement_path)
    field = next((f for f in agreement.identifiers.fields if f.column == target), None)
    if field is None:
        raise UsageError(f"--target {target} is not an identifier field of {agreement_path}")
    clks = read_encodings(encodings_path, agreement).clks
    public = read_public_list(public_path, field.kind)
    truth = read_truth_column(truth_path, field.kind, clks.shape[0]) if truth_path else [""] * clks.shape[0]
    if kind == "frequency":
        return [frequency_attack(clks, public, truth, target=target, top_n=top_n, cluster_threshold=threshold)
                for threshold in (None, cluster_threshold)]
    return [pattern_attack(clks, public, truth, target=target, bits_per_token=field.bits_per_token,
                           ngram=field.ngram)]


def _synth_run(people: int, seed: int, setting: str, agreement_path: Path | None,
               **plan: Any) -> tuple[str, list[AttackOutcome]]:
    from pplink.lab.attacks import AttackPlan, run_attacks, synth_corpus

    name, identifiers = _identifiers(setting, agreement_path)
    corpus = synth_corpus(people, seed)
    return name, run_attacks(corpus, identifiers, seed=seed, plan=AttackPlan(**plan))


@attack.command("frequency")
@_synth_options
@_file_options
@click.option("--target", default="surname", show_default=True, help="Field whose values the attack recovers.")
@click.option("--top-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many of the most frequent values the attacker names.")
@click.option("--cluster-threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9,
              show_default=True, help="Dice threshold for grouping near-identical encodings.")
@FORMAT_OPTION
def frequency_command(people: int, seed: int, setting: str, agreement_path: Path | None,
                      encodings_path: Path | None, public_path: Path | None, truth_path: Path | None,
                      target: str, top_n: int, cluster_threshold: float, output_format: str) -> None:
    """Align the most frequent encodings (exact, then near-identical groups) with a public list."""
    if encodings_path is not None:
        outcomes = _real_file_run("frequency", encodings_path, agreement_path, public_path, truth_path, target,
                                  top_n, cluster_threshold)
        _echo([(encodings_path.name, outcomes)], output_format, scored=truth_path is not None)
        return
    name, outcomes = _synth_run(people, seed, setting, agreement_path, attacks=("frequency",), targets=(target,),
                                top_n=top_n, cluster_threshold=cluster_threshold)
    _echo([(name, outcomes)], output_format)


@attack.command("pattern")
@_synth_options
@_file_options
@click.option("--target", default="given_name", show_default=True, help="Field whose values the attack recovers.")
@FORMAT_OPTION
def pattern_command(people: int, seed: int, setting: str, agreement_path: Path | None,
                    encodings_path: Path | None, public_path: Path | None, truth_path: Path | None,
                    target: str, output_format: str) -> None:
    """Mine the bit patterns of frequent q-grams, name them, and read values back."""
    if encodings_path is not None:
        outcomes = _real_file_run("pattern", encodings_path, agreement_path, public_path, truth_path, target,
                                  20, 0.9)
        _echo([(encodings_path.name, outcomes)], output_format, scored=truth_path is not None)
        return
    name, outcomes = _synth_run(people, seed, setting, agreement_path, attacks=("pattern",), targets=(target,))
    _echo([(name, outcomes)], output_format)


def _overlaps(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter("give shares between 0 and 1, comma-separated (0.1,0.5,1)") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise click.BadParameter("give shares between 0 and 1, comma-separated (0.1,0.5,1)")
    return values


@attack.command("graph")
@_synth_options
@click.option("--overlap", "overlap_text", default="0.1,0.5,1", show_default=True,
              help="Shares of the encoded records the attacker's plaintext database holds, comma-separated.")
@click.option("--known-pairs", type=click.IntRange(min=0), default=25, show_default=True,
              help="Also run with this many matching pairs handed to the attacker (0: do not).")
@FORMAT_OPTION
def graph_command(people: int, seed: int, setting: str, agreement_path: Path | None, overlap_text: str,
                  known_pairs: int, output_format: str) -> None:
    """Match encodings to an overlapping plaintext database by aligning similarity graphs.

    Slow: about a minute per overlap at the default size.
    """
    name, outcomes = _synth_run(people, seed, setting, agreement_path, attacks=("graph",),
                                overlaps=_overlaps(overlap_text), known_pairs=known_pairs)
    _echo([(name, outcomes)], output_format)


@attack.command("sweep")
@click.option("--people", type=click.IntRange(min=100), default=24_000, show_default=True,
              help="Synthetic population (24,000 people: about 20,000 encoded records).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed.")
@click.option("--settings", "settings_text", default=",".join(_SETTINGS), show_default=True,
              help="Named encodings to compare, comma-separated.")
@click.option("--attacks", "attacks_text", default="frequency,pattern,graph", show_default=True,
              help="Attack families to run, comma-separated.")
@click.option("--overlap", "overlap_text", default="0.1,0.5,1", show_default=True,
              help="Graph attacker's overlaps, comma-separated.")
@click.option("--link/--no-link", default=True, show_default=True,
              help="Also link the agencies' encodings and report pairwise F1.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.8,
              show_default=True, help="Linkage threshold for --link.")
@FORMAT_OPTION
def sweep_command(people: int, seed: int, settings_text: str, attacks_text: str, overlap_text: str, link: bool,
                  threshold: float, output_format: str) -> None:
    """Run the attacks against several encodings of one synthetic population, linkage F1 alongside.

    Slow with the graph attack: several minutes per setting at the default size.
    """
    from pplink.errors import UsageError
    from pplink.lab.attacks import AttackPlan, sweep, synth_corpus

    named = _named_settings()
    chosen = [s.strip() for s in settings_text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in named]
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}: choose from {', '.join(_SETTINGS)}")
    plan = AttackPlan(attacks=tuple(a.strip() for a in attacks_text.split(",")), overlaps=_overlaps(overlap_text))
    link_function = None
    if link:
        def link_function(datasets: Sequence[Any], threshold: float) -> Sequence[Any]:
            from coordinator.linkage.match import match_clks

            return match_clks(datasets, threshold).labels

    corpus = synth_corpus(people, seed)
    rows = sweep(corpus, {s: named[s] for s in chosen}, seed=seed, plan=plan, link=link_function,
                 threshold=threshold)
    if output_format == "json":
        click.echo(json.dumps([{"setting": r.setting, "fill": round(r.fill, 4), "linkage": r.linkage,
                                "outcomes": [o.as_dict() for o in r.outcomes]} for r in rows]))
        return
    click.echo(render_outcomes([(r.setting, r.outcomes) for r in rows]))
    if link:
        click.echo(f"\nlinkage of the agencies' encodings at threshold {threshold:g} (pairwise, all agencies):")
        for r in rows:
            assert r.linkage is not None
            click.echo(f"  {r.setting:<20} precision {r.linkage['precision']:.4f}  recall {r.linkage['recall']:.4f}  "
                       f"F1 {r.linkage['f1']:.4f}  bits set {100 * r.fill:.0f}%")


def _echo(results: list[tuple[str, list[AttackOutcome]]], output_format: str, scored: bool = True) -> None:
    if output_format == "json":
        click.echo(json.dumps([{"setting": name, "scored": scored, "outcomes": [o.as_dict() for o in outcomes]}
                               for name, outcomes in results]))
        return
    click.echo(render_outcomes(results, scored=scored))


def render_outcomes(results: Sequence[tuple[str, Sequence[AttackOutcome]]], *, scored: bool = True) -> str:
    """A plain-text table of attack outcomes, one line per attack run.

    ``overlap`` and ``known`` describe the graph attacker's database and the pairs handed to it;
    ``top-N`` is how many of the most frequent values the frequency attacks placed correctly.
    """
    header = ("setting", "attack", "target", "overlap", "known", "top-N", "guessed", "correct", "precision", "rate")
    lines = [header]
    for name, outcomes in results:
        for o in outcomes:
            overlap = o.detail.get("overlap")
            known = o.detail.get("known_pairs")
            top = "-" if o.values_recovered is None else f"{o.values_recovered}/{o.top_n}"
            lines.append((
                name, o.attack, o.target,
                "-" if overlap is None else f"{overlap:g}",
                "-" if not known else str(known),
                top if scored else "-",
                f"{o.guessed:,}",
                f"{o.correct:,}" if scored else "-",
                f"{o.precision:.3f}" if scored else "-",
                f"{100 * o.rate:.2f}%" if scored else "-",
            ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    if not scored:
        text.append("(no --truth: the attack's guesses are counted, not scored)")
    return "\n".join(text)
