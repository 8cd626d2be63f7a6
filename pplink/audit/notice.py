"""A plain-language notice about a linkage, written for a parent, built from the agreement alone.

Agencies publish it (Markdown or HTML) for the families in their records. It says which agencies
take part, what is shared and what never leaves each agency (and, as SECURITY.md measures it, how
far the codes resist attack), for which purposes, which details a score uses at each agency, who
can see what, how to opt out at each agency and what happens to links already made, how long
anything is kept, what the privacy budget means in words, how accurate linkage was last measured
to be and for whom it worked less well, the lawful basis, rights and where to complain, and who to
contact.

Measured figures come only from released, differentially private numbers on the ledger (link
rates by group), never from records. The notice is a document model (:class:`Notice`) rendered by
:func:`render_markdown` and :func:`render_html`, so both say exactly the same.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from pplink.agreement import AgreementConfig, Role
from pplink.audit.release_views import derive_link_rates
from pplink.ledger import LedgerEntry
from pplink.transparency import is_placeholder

__all__ = ["Notice", "Section", "build_notice", "notice_warnings", "party_label", "render_html", "render_markdown"]


@dataclass(frozen=True)
class Section:
    """A heading with paragraphs and an optional bullet list."""

    heading: str
    paragraphs: tuple[str, ...] = ()
    bullets: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()  # first row is the header


@dataclass(frozen=True)
class Notice:
    """The whole notice."""

    title: str
    intro: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


def party_label(party_id: str, name: str = "") -> str:
    """A readable name for a party: its declared name, else its id in words.

    >>> party_label("social_care")
    "Children's social care"
    >>> party_label("police", "Thames Valley Police")
    'Thames Valley Police'
    """
    if name:
        return name
    known = {"social_care": "Children's social care", "school": "Schools", "health": "Health visiting and NHS services",
             "police": "Police"}
    return known.get(party_id, party_id.replace("_", " ").capitalize())


def _days(days: int) -> str:
    if days % 365 == 0 or days >= 730:
        years = days / 365
        return f"{years:.0f} years ({days} days)" if years != 1 else f"1 year ({days} days)"
    return f"{days} days"


def _budget_words(config: AgreementConfig) -> str:
    b = config.budget
    strength = "strong" if b.epsilon <= 1 else "moderate" if b.epsilon <= 5 else "weak"
    return (
        f"Every number published about the linked records (for example how many families are known to "
        f"two agencies) has random noise added, so that no published number can reveal whether any one "
        f"person is in the records. The agreement caps the total of all these releases at a privacy "
        f"budget of epsilon = {b.epsilon:g} (delta = {b.delta:g}). The smaller the budget, the more "
        f"noise and the stronger the protection; {b.epsilon:g} gives {strength} protection. When the "
        f"budget is spent, nothing more is released. Every release is written to a signed log before "
        f"anyone sees it, and an independent auditor checks the log and the total."
    )


def _accuracy_section(config: AgreementConfig, ledger: Sequence[LedgerEntry]) -> Section:
    releases = [e for e in ledger if e.query.kind.value == "link-rate" and e.query.attribute]
    if not releases:
        return Section(
            "How accurate is it?",
            ("Linkage accuracy has not been measured and published under this agreement yet. When it is, "
             "this notice will show how often records were linked for different groups of families.",),
        )
    latest = releases[-1]
    rates = [r for r in derive_link_rates(latest.cells, latest.query.parties, latest.min_cell_size)
             if r.rate is not None]
    by_value: dict[str, list[float]] = {}
    clipped: set[str] = set()
    for r in rates:
        by_value.setdefault(r.value, []).append(r.rate)  # type: ignore[arg-type]
        if r.clipped:
            clipped.add(r.value)
    averages = {v: sum(x) / len(x) for v, x in by_value.items() if x}
    attribute = latest.query.attribute.replace("_", " ")  # type: ignore[union-attr]
    rows = [(attribute, "average share linked")]
    # A share the noise pushed past 100% (or below 0%) was cut to the bound: say so rather than claim it.
    rows += [("not recorded" if v == "(missing)" else v,
              f"{100 * a:.0f}%" + (" (too few people to measure: noise outweighed the count)" if v in clipped else ""))
             for v, a in sorted(averages.items())]
    paragraphs = [
        f"The last measurement (released {latest.time[:10]}, with noise, epsilon {latest.loss.epsilon:.2g}) "
        "shows how often a family known to one agency was also found at another, by group. Lower shares "
        "can mean real differences in who uses each service, but they can also mean that records of "
        "that group link less well, for example because names are spelt in different ways."
    ]
    known = {v: a for v, a in averages.items() if v != "(missing)"}
    if len(known) >= 2:
        low = min(known, key=known.__getitem__)
        paragraphs.append(f"Links were found least often for families with {attribute} {low}. People using the "
                          "linked records should take this into account.")
    return Section("How accurate is it?", tuple(paragraphs), table=tuple(rows))


def _security_words() -> str:
    # Worded after SECURITY.md's "What is not protected" and its measured attacks: the codes are
    # hard to reverse, not impossible, and the notice must not promise more than was measured.
    return ("The codes are hard, but not impossible, to turn back into names. Researchers have published "
            "attacks on codes of this kind; the project measures them on made-up records and publishes the "
            "results in its security statement (SECURITY.md). The settings used here stopped the attacks that "
            "guess names from how often codes occur, but an organisation that already held most of the same "
            "people's details could still recognise some of them, and an agency working together with the "
            "matching organisation could re-identify people. The agreement forbids both; the software alone "
            "cannot prevent them.")


def _scores_section(config: AgreementConfig) -> Section:
    assert config.scoring is not None
    owner = party_label(config.scoring.label_owner, config.party(config.scoring.label_owner).name)
    by_agency = tuple(
        f"{party_label(pid, config.party(pid).name)}: {', '.join(c.replace('_', ' ') for c in columns)}"
        for pid, columns in config.scoring.features.items() if columns
    )
    return Section(
        "About scores",
        (f"The agencies may work out a score that suggests which families might benefit from early help. "
         f"Only {owner} sees scores, and only for families it already works with. A score is a prompt for a "
         "practitioner to take a second look, never a decision. Scores can be wrong, and they can be wrong "
         "more often for some groups of families; how often they are wrong, for each group, is published "
         "with noise like every other number.",
         "The score is worked out from these details, which each agency keeps and never sends:"),
        bullets=by_agency,
    )


def _opt_out_section(config: AgreementConfig) -> Section:
    ids = config.identifiers
    agencies = [p for p in config.parties if p.role is Role.AGENCY]
    if ids.opt_out_column is None:
        return Section("If you do not want your records linked", (
            "This agreement has no way to record an opt-out: the agencies link every record it covers. "
            "You can still object to an agency (see your rights below).",))
    how = tuple(f"{party_label(p.id, p.name)}: {p.opt_out_how or 'ask the agency (no route is written down yet)'}"
                for p in agencies)
    return Section(
        "If you do not want your records linked",
        (
            "Each agency records opt-outs separately, so tell every agency that holds records about you:",
            f"The agency marks your record as opted out (its '{ids.opt_out_column}' field). From its next "
            "linkage on, your record is never turned into a code and never sent. If the mark cannot be read "
            "as either \"opted out\" or \"not opted out\", the record is not linked either: a mark that is "
            "unclear is never taken as agreement. Agencies count opt-outs so that they can report how many "
            "people chose this, without saying who.",
            "Links and scores made before you opted out are not undone at once: your record drops out of the "
            "next linkage round and of every score worked out after it, and earlier links are deleted when "
            f"their time runs out (at most {_days(config.retention.linkage_days)}). You can ask each agency "
            "to delete them sooner.",
        ),
        bullets=how,
    )


def _rights_section(config: AgreementConfig) -> Section:
    t = config.transparency
    missing = "not written down in the agreement yet; ask the contact below"
    paragraphs = (
        f"Who is responsible in law: {t.controller or missing}.",
        f"Why the law allows this linkage: {t.lawful_basis or missing}.",
        f"Where to complain: {t.complaints or missing}.",
    )
    return Section("Your rights", paragraphs, bullets=t.rights)


def notice_warnings(config: AgreementConfig) -> list[str]:
    """What the notice would publish that is empty or still a placeholder (``agreement check`` prints these)."""
    warnings = []
    t = config.transparency
    for name, value in (("contact", config.contact), ("transparency.controller", t.controller),
                        ("transparency.lawful_basis", t.lawful_basis), ("transparency.complaints", t.complaints)):
        if is_placeholder(value):
            warnings.append(f"{name} is {'empty' if not value.strip() else 'a placeholder'}; "
                            "the notice would publish it as it is")
    if not t.rights or any(is_placeholder(r) for r in t.rights):
        warnings.append("transparency.rights is empty or holds a placeholder")
    if config.identifiers.opt_out_column is not None:
        for p in config.parties:
            if p.role is Role.AGENCY and is_placeholder(p.opt_out_how):
                warnings.append(f"parties.{p.id}.opt_out_how is {'empty' if not p.opt_out_how else 'a placeholder'}"
                                ": families would not be told how to opt out there")
    return warnings


def build_notice(config: AgreementConfig, ledger: Sequence[LedgerEntry] = ()) -> Notice:
    """Build the notice from the agreement and, optionally, the released entries of its ledger."""
    agencies = [p for p in config.parties if p.role is Role.AGENCY]
    coordinator = config.coordinator
    auditors = [p for p in config.parties if p.role is Role.AUDITOR]
    identifier_words = {"name": "names", "given_name": "names", "date": "date of birth",
                        "birth_date": "date of birth", "sex": "sex", "postcode": "postcode", "text": "other details"}
    identifiers = sorted({identifier_words[f.kind.value] for f in config.identifiers.fields})
    attributes = [a.column.replace("_", " ") for a in config.release.attributes]
    sections = [
        Section(
            "Who takes part",
            ("These organisations have signed the agreement:",),
            bullets=tuple(
                [f"{party_label(p.id, p.name)} ({p.id}): holds its own records" for p in agencies]
                + [f"{party_label(coordinator.id, coordinator.name)} ({coordinator.id}): matches scrambled codes and "
                   "publishes only protected statistics; it never sees names or records"]
                + [f"{party_label(p.id, p.name)} ({p.id}): independent auditor; checks every published number"
                   for p in auditors]
            ),
        ),
        Section(
            "What is shared, and what never leaves each agency",
            (
                f"Inside each agency, a computer turns your {', '.join(identifiers)} into a scrambled code, using a "
                "secret key that only the agencies hold. The code lets records about the same person be "
                "matched. The organisation that does the matching does not have the key, so it cannot make "
                "codes from names it guesses.",
                _security_words(),
                "What leaves each agency: the scrambled codes"
                + (f", and these general facts: {', '.join(attributes)}" if attributes else "")
                + ". What never leaves: names, dates of birth, addresses, case notes, and the details each "
                "agency holds about you.",
            ),
        ),
        Section("What the linkage is for", ("The agreement allows these purposes, and no others:",),
                bullets=tuple(config.purposes)),
    ]
    if config.scoring is not None:
        sections.append(_scores_section(config))
    sections += [
        Section(
            "Who can see what",
            (),
            table=(
                ("who", "can see", "cannot see"),
                ("each agency", "its own records, and a linkage code for each of them",
                 "other agencies' records, or which of its records were found elsewhere"),
                (party_label(coordinator.id, coordinator.name), "scrambled codes and the general facts listed above",
                 "names, dates of birth, addresses, case details"),
                ("auditor", "the agreement and the log of published numbers", "anything else"),
                ("the public", "the published, noise-protected statistics", "anything about one person"),
            ),
        ),
        _opt_out_section(config),
        Section(
            "How long anything is kept",
            (),
            bullets=(
                f"Scrambled codes: at most {_days(config.retention.encodings_days)}.",
                f"The links between records: at most {_days(config.retention.linkage_days)}.",
                f"The log of published numbers: {_days(config.retention.ledger_days)}, so that it can be audited.",
            ),
        ),
        Section("What the privacy budget means", (_budget_words(config),)),
        _accuracy_section(config, ledger),
        _rights_section(config),
        Section("Who to contact", (config.contact,)),
    ]
    return Notice(
        title=f"How your records are linked: {config.name}",
        intro=(f"This notice explains, in plain words, how {len(agencies)} organisations that work with children "
               "and families link some of their records, and how your privacy is protected. Agreement "
               f"reference: {config.agreement_id[:16]}."),
        sections=tuple(sections),
    )


def render_markdown(notice: Notice) -> str:
    """The notice as Markdown."""
    out = [f"# {notice.title}", "", notice.intro, ""]
    for s in notice.sections:
        out += [f"## {s.heading}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.bullets:
            out += [f"- {b}" for b in s.bullets] + [""]
        if s.table:
            head, *rows = s.table
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(out)


def render_html(notice: Notice) -> str:
    """The notice as one self-contained HTML page (no scripts, no external resources)."""
    e = html.escape
    body = [f"<h1>{e(notice.title)}</h1>", f"<p>{e(notice.intro)}</p>"]
    for s in notice.sections:
        body.append(f"<h2>{e(s.heading)}</h2>")
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in s.bullets) + "</ul>")
        if s.table:
            head, *rows = s.table
            body.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;line-height:1.5;"
             "color:#1b1b1b}table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #bbb;"
             "padding:.3rem .6rem;text-align:left;vertical-align:top}h2{margin-top:2rem}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(notice.title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
