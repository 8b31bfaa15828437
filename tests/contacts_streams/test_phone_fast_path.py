"""``identities.normalize_phone`` answers ``+`` and ASCII digits without ``phonenumbers.parse``
(``_e164_of_plus_digits``): it must answer exactly what parse does, for every country code."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from contacts_streams import identities


def slow(text: str, region: str | None = None) -> str:
    return identities._parse_phone(text.strip(), region)


def test_every_country_code_and_length_answers_as_parse():
    rng = random.Random(5)
    checked = 0
    for country_code in sorted(COUNTRY_CODE_TO_REGION_CODE):
        for length in range(0, 19):
            for lead in ("", "0", "00", "1", "8", "9", "06", "011"):
                rest = (lead + "".join(rng.choice("0123456789") for _ in range(length)))[: max(length, len(lead))]
                text = f"+{country_code}{rest}"
                fast = identities._e164_of_plus_digits(text)
                if fast is not None:
                    assert fast == slow(text), text
                    checked += 1
    assert checked > 10_000  # the fast path answers most of them


@settings(max_examples=2000, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=22))
def test_any_plus_and_digits_answers_as_parse(digits):
    text = "+" + digits
    fast = identities._e164_of_plus_digits(text)
    if fast is not None:
        assert fast == slow(text)


@settings(max_examples=500, deadline=None)
@given(st.text("+0123456789 -().x/\u0661\uff0b", max_size=20), st.sampled_from([None, "DE", "US", "IT"]))
def test_normalize_phone_is_parse_whatever_the_spelling(value, region):
    identities.normalize_phone.cache_clear()
    assert identities.normalize_phone(value, region) == slow(value, region)


def test_region_does_not_matter_to_a_number_with_its_country_code():
    for region in (None, "DE", "US", "GB"):
        assert identities.normalize_phone("+4901701234567", region) == "+491701234567"
        assert identities.normalize_phone(" +15550001234 ", region) == "+15550001234"
