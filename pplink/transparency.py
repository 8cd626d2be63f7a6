"""What an agreement tells families about the law: the agreement's ``[transparency]`` section.

The notice (``pplink agreement explain``) prints these fields as written; ``pplink agreement check``
warns while any of them is empty or still a placeholder, so a template's filler text is never
published as if it were the real contact, lawful basis or complaints route.
"""

from __future__ import annotations

import re

from pplink.models import PplinkModel

__all__ = ["PLACEHOLDER", "Transparency", "is_placeholder"]

#: Text that marks a value as not filled in yet (reserved example domains, TODO markers, <...>).
PLACEHOLDER = re.compile(r"example\.(org|com|net)\b|\bexample@|\bTODO\b|TO BE COMPLETED|<[^<>]+>|\bX{3,}\b",
                         re.IGNORECASE)


def is_placeholder(text: str) -> bool:
    """Whether a value is empty or still placeholder text.

    >>> is_placeholder("Information governance lead, data.protection@example.org"), is_placeholder("dpo@kent.gov.uk")
    (True, False)
    """
    return not text.strip() or bool(PLACEHOLDER.search(text))


class Transparency(PplinkModel):
    """The legal facts a privacy notice must give, as the controllers' data protection officers word them."""

    #: Who is responsible for the linkage in law (the controllers, or joint controllers).
    controller: str = ""
    #: The lawful basis (UK GDPR Article 6, and Article 9 with its DPA 2018 condition for special
    #: category data), in plain words.
    lawful_basis: str = ""
    #: The rights families have over this linkage, one per item, in plain words.
    rights: tuple[str, ...] = ()
    #: Where to complain when the agencies' answer is not enough (the ICO in the UK).
    complaints: str = ""
