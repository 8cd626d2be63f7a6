"""Per-agency habits: who each agency sees, how it writes identifiers, how often it errs, its features.

The figures are modest on purpose: with the default rates, a good linkage of four agencies reaches a
pairwise F1 around 0.95 or better, while still having to cope with every kind of error real data has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CorruptionRates:
    """Probability per record of each kind of identifier error, before agency quality scaling.

    Attributes:
        typo_given: one typo (substitution, insertion, deletion, transposition) in the given name.
        typo_surname: one typo in the surname.
        nickname: given name recorded as a known-as form, where the name has one (William -> Bill).
        surname_change: an adult's surname recorded as a different one (marriage, divorce).
        hyphenation: surname recorded double-barrelled with another family name.
        dob_swap: day and month swapped (only where the day is 12 or less and differs from the month).
        dob_year: year off by one.
        dob_day: day off by one.
        moved: postcode from another address (a house move between agencies' contacts).
        missing_given / missing_surname / missing_dob / missing_sex / missing_postcode: field empty.
        case: name written all upper or all lower case.
        whitespace: a stray leading, trailing or doubled space in a name.
    """

    typo_given: float = 0.02
    typo_surname: float = 0.02
    nickname: float = 0.15
    surname_change: float = 0.03
    hyphenation: float = 0.01
    dob_swap: float = 0.01
    dob_year: float = 0.004
    dob_day: float = 0.004
    moved: float = 0.05
    missing_given: float = 0.004
    missing_surname: float = 0.004
    missing_dob: float = 0.008
    missing_sex: float = 0.02
    missing_postcode: float = 0.03
    case: float = 0.05
    whitespace: float = 0.02

    def scaled(self, factor: float) -> CorruptionRates:
        """These rates times ``factor``, each capped at 1.

        >>> CorruptionRates().scaled(0.0).moved
        0.0
        """
        return replace(self, **{k: min(1.0, v * factor) for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class FeatureSpec:
    """One numeric feature an agency holds.

    ``count`` features are Poisson with log-rate ``intercept + risk * r + deprivation * d + noise``;
    ``percent`` features are ``intercept + risk * r + deprivation * d + noise`` clipped to 0..100 and
    written with one decimal. ``r`` is the person's latent risk, ``d`` centred deprivation (+1 most
    deprived). A deprivation term on its own is how poverty gets mistaken for risk.
    """

    name: str
    intercept: float
    risk: float
    deprivation: float = 0.0
    kind: str = "count"


@dataclass(frozen=True)
class AgencyProfile:
    """How one agency sees people and writes their identifiers.

    Attributes:
        prefix: record id prefix (``SC`` gives ``SC0001234``).
        presence_child: probability that a child (age 0..17) is on the agency's books.
        presence_adult: probability that an adult is.
        min_age / max_age: ages the agency serves (school: 4..17).
        risk_tilt: log-odds added to presence per unit of latent risk (social care and police see
            families in difficulty more often than others).
        dmy_share: share of dates written ``DD/MM/YYYY`` (the rest ``YYYY-MM-DD``).
        sex_labels: (female, male) labels as the agency writes them.
        surname_upper: surnames stored in upper case.
        postcode_nospace: share of postcodes stored without the space.
        postcode_lower: share of postcodes stored in lower case.
        ascii_only: diacritics are stripped (a legacy system).
        opt_out_blank: share of "not opted out" written as an empty field instead of ``N``.
        quality: multiplier on :class:`CorruptionRates` (below 1: cleaner than average).
        features: the agency's numeric features.
    """

    prefix: str
    presence_child: float
    presence_adult: float
    min_age: int
    max_age: int
    risk_tilt: float
    dmy_share: float
    sex_labels: tuple[str, str]
    surname_upper: bool
    postcode_nospace: float
    postcode_lower: float
    ascii_only: bool
    opt_out_blank: float
    quality: float
    features: tuple[FeatureSpec, ...]


#: Default error rates for an agency of average quality.
BASE_RATES = CorruptionRates()

#: Profiles of the four agencies of the pilot; other names get :func:`agency_profile`'s default.
PROFILES: dict[str, AgencyProfile] = {
    "social_care": AgencyProfile(
        prefix="SC",
        presence_child=0.30,
        presence_adult=0.30,
        min_age=0,
        max_age=200,
        risk_tilt=0.8,
        dmy_share=0.1,
        sex_labels=("F", "M"),
        surname_upper=False,
        postcode_nospace=0.2,
        postcode_lower=0.05,
        ascii_only=False,
        opt_out_blank=0.1,
        quality=1.0,
        features=(
            FeatureSpec("referrals", -0.6, 0.8, 0.1),
            FeatureSpec("prior_assessments", -1.3, 0.7, 0.1),
        ),
    ),
    "school": AgencyProfile(
        prefix="SCH",
        presence_child=0.70,
        presence_adult=0.0,
        min_age=4,
        max_age=17,
        risk_tilt=0.0,
        dmy_share=1.0,
        sex_labels=("Female", "Male"),
        surname_upper=False,
        postcode_nospace=0.1,
        postcode_lower=0.2,
        ascii_only=False,
        opt_out_blank=1.0,
        quality=0.8,
        features=(
            FeatureSpec("attendance_pct", 93.0, -3.0, -1.5, kind="percent"),
            FeatureSpec("exclusions", -2.6, 0.9, 0.2),
        ),
    ),
    "health": AgencyProfile(
        prefix="HL",
        presence_child=0.85,
        presence_adult=0.85,
        min_age=0,
        max_age=200,
        risk_tilt=0.2,
        dmy_share=0.0,
        sex_labels=("female", "male"),
        surname_upper=False,
        postcode_nospace=0.0,
        postcode_lower=0.0,
        ascii_only=False,
        opt_out_blank=0.0,
        quality=0.6,
        features=(
            FeatureSpec("ae_visits", -0.8, 0.5, 0.25),
            FeatureSpec("missed_appointments", -0.9, 0.6, 0.3),
        ),
    ),
    "police": AgencyProfile(
        prefix="PN",
        presence_child=0.25,
        presence_adult=0.25,
        min_age=0,
        max_age=200,
        risk_tilt=0.8,
        dmy_share=0.05,
        sex_labels=("FEMALE", "MALE"),
        surname_upper=True,
        postcode_nospace=1.0,
        postcode_lower=0.0,
        ascii_only=True,
        opt_out_blank=0.3,
        quality=1.4,
        features=(
            FeatureSpec("callouts", -1.0, 0.8, 0.1),
            FeatureSpec("dv_incidents", -2.2, 0.9, 0.0),
        ),
    ),
}


def agency_profile(agency: str) -> AgencyProfile:
    """The profile of ``agency``: one of :data:`PROFILES`, or a generic one for any other name.

    A generic agency sees half of everyone, writes ISO dates and has two count features,
    ``<agency>_contacts`` and ``<agency>_flags``.

    >>> agency_profile("housing").features[0].name
    'housing_contacts'
    """
    if agency in PROFILES:
        return PROFILES[agency]
    return AgencyProfile(
        prefix="".join(ch for ch in agency.upper() if ch.isalnum())[:3] or "X",
        presence_child=0.5,
        presence_adult=0.5,
        min_age=0,
        max_age=200,
        risk_tilt=0.3,
        dmy_share=0.1,
        sex_labels=("F", "M"),
        surname_upper=False,
        postcode_nospace=0.3,
        postcode_lower=0.05,
        ascii_only=False,
        opt_out_blank=0.2,
        quality=1.0,
        features=(
            FeatureSpec(f"{agency}_contacts", -0.5, 0.6, 0.15),
            FeatureSpec(f"{agency}_flags", -1.6, 0.8, 0.0),
        ),
    )
