"""Pure rules of finding people: normalization of identities, search tokens and query terms,
the merge preview, duplicate conflicts, and unmerge (merge then unmerge gives both back)."""

from __future__ import annotations

import uuid

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contacts_streams import identities as I
from contacts_streams import model
from tests.strategies import CREATE_PAYLOADS, KEYS, METADATA, TEXT

T0, T1, T2, T3 = 1_600_000_000_000, 1_600_000_100_000, 1_600_000_200_000, 1_600_000_300_000

# --- phones ----------------------------------------------------------------------------------------

REGIONS = ["US", "DE", "GB", "FR", "BR", "IN"]


@st.composite
def phone_numbers(draw):
    """A valid number of one region, written the ways people write it."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, draw(st.sampled_from([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])))
    style = draw(st.sampled_from([phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]))
    text = phonenumbers.format_number(example, style)
    text = draw(st.sampled_from(["{}", " {} ", "{}\t"])).format(text)
    if draw(st.booleans()):
        text = text.replace(" ", draw(st.sampled_from(["-", ".", " "])))
    return region, text, phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)


@given(phone_numbers())
def test_any_way_of_writing_a_number_gives_its_e164_in_its_region(case):
    region, text, e164 = case
    assert I.normalize_phone(text, region) == e164


@given(phone_numbers(), st.sampled_from(REGIONS))
def test_an_international_number_is_the_same_in_every_default_region(case, default):
    _region, text, e164 = case
    number = phonenumbers.parse(e164)
    international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    assert I.normalize_phone(international, default) == e164


def test_the_issue_examples():
    assert I.normalize("phone", "0170 1234567", "DE") == I.normalize("phone", "+49 170 1234567", "US") == ("phone", "+491701234567")
    assert I.normalize("email", " Grace@Example.ORG ", None) == ("email", "grace@example.org")


def test_an_unparseable_number_is_its_digits():
    assert I.normalize_phone("call 12-34", "US") == "1234"
    assert I.normalize_phone("0170 1234567", None) == "01701234567"  # no region: no guess
    assert I.normalize_phone("+99 12", "US") == "+9912"
    assert I.normalize_phone("ask reception", "US") == "ask reception"


@given(st.text(max_size=30), st.sampled_from(REGIONS + [None]))
def test_normalizing_never_fails_and_is_stable(text, region):
    once = I.normalize_phone(text, region)
    assert "\x00" not in once
    assert I.normalize_phone(once, region) == once or not once.startswith("+")


# --- emails and other keys ------------------------------------------------------------------------------


@given(st.emails(), st.sampled_from([str.upper, str.lower, str.title, lambda s: s]), st.sampled_from(["", " ", "\t", "\n "]))
def test_emails_match_whatever_the_case_and_surrounding_white_space(email, case, space):
    assert I.normalize_email(space + case(email) + space) == email.strip().casefold()


def test_unicode_emails_fold_case():
    assert I.normalize_email("ÄNNE@Straße.DE") == I.normalize_email("änne@strasse.de")


def test_other_keys_and_values_are_trimmed_and_case_folded():
    assert I.normalize(" Telegram ", " @Grace ", "US") == ("telegram", "@grace")


@given(st.dictionaries(KEYS, TEXT, max_size=5), st.sampled_from(REGIONS))
def test_the_header_carries_exactly_what_the_store_would_compute(via, region):
    contact = {"id": str(uuid.uuid4()), "via": via}
    computed = I.identities_of(contact, region)
    identities, tokens = I.decode(I.header(contact, region)[I.HEADER])
    assert [tuple(p) for p in identities] == computed and [tuple(t) for t in tokens] == I.search_tokens(contact, computed)
    assert computed == sorted(set(computed))


def test_a_version_1_header_gives_the_identities_and_leaves_the_tokens_to_the_store():
    assert I.decode('[1,[["email","a@example.org"]]]') == ([["email", "a@example.org"]], None)
    assert I.decode('[2,[["email","a\\u0000"]],[]]') is None  # U+0000 separates the parts of index keys
    assert I.decode('[2,[["phone","2"],["email","1"]],[["w","b"],["w","a"]]]') == ([["email", "1"], ["phone", "2"]], [["w", "a"], ["w", "b"]])
    assert I.decode('[2,[["phone","2"],5],[]]') is None and I.decode('[3,[],[]]') is None


@given(st.lists(st.text(max_size=8), max_size=12))
def test_a_local_part_or_email_token_never_matters_to_a_word_query(names):
    """Why the local part has no token and whole emails a namespace of their own: every query
    word that is a prefix of either is a prefix of one of the local part's words."""
    for local in names:
        email = f"{local}@example.org"
        folded = I.fold(email)
        word_tokens = {t for n, t in I.search_tokens({"via": {"email": email}}) if n == I.WORD}
        for part in (folded, folded.split("@", 1)[0]):
            for end in range(1, len(part) + 1):
                for namespace, term in I.query_terms(part[:end]):
                    if namespace == I.WORD and part.startswith(term):
                        assert any(t.startswith(term) for t in word_tokens), (email, term)


def test_a_header_too_large_to_carry_is_left_out():
    contact = {"via": {f"k{i}": "x" * 2048 for i in range(20)}}
    assert I.header(contact, "US") == {}
    assert I.decode("[2,[]]") is None and I.decode("nonsense") is None and I.decode(None) is None


# --- search tokens ---------------------------------------------------------------------------------------


def test_search_tokens_fold_case_and_accents_and_split_words():
    contact = {"display_name": "Zoë O'Brien-Smith", "organization_name": "ACME Inc.", "via": {"Email": "Zoe.OBrien@Example.org", "phone": "+49 170 1234567"}}
    tokens = I.search_tokens(contact, [("phone", "+491701234567")])
    words = {t for n, t in tokens if n == I.WORD}
    assert words == {"zoe", "o", "brien", "smith", "acme", "inc", "obrien"}
    assert (I.EMAIL_WHOLE, "zoe.obrien@example.org") in tokens
    assert (I.DIGITS, "491701234567"[::-1]) in tokens


@given(st.text(max_size=40))
def test_a_name_is_found_by_each_of_its_words_typed_any_way(name):
    tokens = {t for _n, t in I.search_tokens({"display_name": name})}
    for word in I.words(name):
        for namespace, term in I.query_terms(word.upper()):
            if namespace == I.WORD:
                assert any(t.startswith(term) for t in tokens)


def test_query_terms():
    assert I.query_terms("gra") == [(I.WORD, "gra")]
    assert I.query_terms("Grace Höpper") == [(I.WORD, "hopper"), (I.WORD, "grace")]
    assert I.query_terms("+49 (170) 123-4567") == [(I.DIGITS, "491701234567"[::-1])]
    assert I.query_terms("123") == [(I.WORD, "123")]  # under 4 digits: a word
    assert I.query_terms("Grace@Example.org") == [(I.EMAIL_WHOLE, "grace@example.org")]
    assert I.query_terms("!!!") == []


# --- merge preview and group conflicts ---------------------------------------------------------------------


def contact(**fields):
    return model.new_contact(fields, str(uuid.uuid4()), T0)


def test_merge_preview_names_the_sources_values_that_lose():
    destination = contact(display_name="Grace", via={"email": "g@x.org"}, conversations={"6b80b10c-ae6e-4995-844d-c56c4da11623": "sms"})
    source = contact(display_name="Grace H.", title="Rear Admiral", via={"email": "grace@y.org", "phone": "1"}, conversations={"6b80b10c-ae6e-4995-844d-c56c4da11623": "whatsapp"})
    preview = model.merge_preview(destination, source, T1)
    assert preview["destination"] == model.merge_contacts(destination, source, T1)
    assert preview["destination"]["title"] == "Rear Admiral"
    assert preview["conflicts"] == [
        {"field": "display_name", "kept": "Grace", "lost": "Grace H."},
        {"field": "via.email", "kept": "g@x.org", "lost": "grace@y.org"},
        {"field": "conversations.6b80b10c-ae6e-4995-844d-c56c4da11623", "kept": "sms", "lost": "whatsapp"},
    ]


def test_merge_preview_has_no_conflict_for_gaps_and_equal_values():
    destination = contact(display_name="", via={"email": "g@x.org"})
    source = contact(display_name="Grace", via={"email": "g@x.org"})
    assert model.merge_preview(destination, source, T1)["conflicts"] == []


def test_group_conflicts_list_the_distinct_values_of_each_field_that_differs():
    a = contact(display_name="Grace", via={"email": "g@x.org", "phone": "1"})
    b = contact(display_name="grace", via={"email": "g@x.org"}, timezone=2)
    c = contact(display_name="Grace", timezone=2.0)
    assert model.group_conflicts([a, b, c]) == [
        {"field": "display_name", "values": ["Grace", "grace"]},
        {"field": "timezone", "values": [2, 2.0]},
    ]


# --- unmerge ---------------------------------------------------------------------------------------------------

SMALL_KEYS = st.sampled_from(["email", "phone", "k", "x.y"])
SHARED_CONVERSATIONS = st.sampled_from(["6b80b10c-ae6e-4995-844d-c56c4da11623", "0b80b10c-ae6e-4995-844d-c56c4da11623", str(uuid.UUID(int=7))])
# Payloads that overlap often: the same via/metadata keys and conversations on both sides.
OVERLAPPING = st.fixed_dictionaries(
    {},
    optional={
        "display_name": TEXT,
        "title": TEXT,
        "timezone": TEXT | st.integers(-5, 5),
        "via": st.dictionaries(SMALL_KEYS, TEXT, max_size=3),
        "address": st.dictionaries(st.sampled_from(["city", "country"]), TEXT, max_size=2),
        "conversations": st.dictionaries(SHARED_CONVERSATIONS, st.sampled_from(["sms", "facebook"]), max_size=2),
        "metadata": st.dictionaries(SMALL_KEYS, METADATA, max_size=3),
    },
)
PAYLOADS = OVERLAPPING | CREATE_PAYLOADS


def _without_gaps(contact: dict) -> dict:
    """A contact without "" (and null metadata) values: what a merge treats as no value, and
    what an unmerge cannot tell from an absent one."""
    out = {}
    for name, value in contact.items():
        if name in ("via", "address", "metadata"):
            kept = {k: v for k, v in value.items() if v is not None and v != ""}
            if kept:
                out[name] = kept
        elif value != "":
            out[name] = value
    return out


def _timeless(contact: dict) -> dict:
    return {k: v for k, v in contact.items() if k != "updated_at"}


@st.composite
def histories(draw, payloads=PAYLOADS):
    """A contact, made of a payload, with a contact merged into it first (or not)."""
    made = model.new_contact(draw(payloads), str(uuid.uuid4()), T0)
    if draw(st.booleans()):
        made = model.merge_contacts(made, model.new_contact(draw(payloads), str(uuid.uuid4()), T0), T1)
    return made


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), histories())
def test_merge_then_unmerge_gives_both_contacts_back(destination, source):
    merged = model.merge_contacts(destination, source, T2)
    restored, after = model.unmerge(merged, source["id"], T3)
    assert _timeless(restored) == _timeless(source)
    assert _without_gaps(_timeless(after)) == _without_gaps(_timeless(destination))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(histories(), histories())
def test_unmerge_keeps_what_the_destination_changed_after_the_merge(destination, source):
    merged = model.merge_contacts(destination, source, T2)
    gained = merged["merge_history"][-1]["gained"]
    scalars = [p for p in gained if p in model.SCALAR_FIELDS and p != "timezone"]
    assume(scalars)
    changed = model.apply_update(merged, {scalars[0]: "changed since"}, T2 + 1)
    _restored, after = model.unmerge(changed, source["id"], T3)
    assert after[scalars[0]] == "changed since"


def test_unmerge_of_a_pair_never_merged_says_so():
    a, b = contact(display_name="a"), contact(display_name="b")
    with pytest.raises(model.NotMerged, match="never merged"):
        model.unmerge(a, b["id"], T1)
    merged = model.merge_contacts(a, b, T1)
    with pytest.raises(model.NotMerged):
        model.unmerge(merged, a["id"], T1)


def test_unmerge_undoes_the_latest_merge_of_that_source():
    destination, source = contact(display_name="d"), contact(title="first")
    once = model.merge_contacts(destination, source, T1)
    again = model.merge_contacts(once, {**source, "title": "second", "organization_name": "o"}, T2)
    restored, after = model.unmerge(again, source["id"], T3)
    assert restored["title"] == "second" and "organization_name" not in after
    assert [e["title"] for e in after["merge_history"]] == ["first"]


def test_unmerge_of_an_old_full_snapshot_moves_conversations_back_and_keeps_the_rest():
    conversation = "6b80b10c-ae6e-4995-844d-c56c4da11623"
    source = contact(display_name="s", title="t", conversations={conversation: "sms"})
    destination = contact(display_name="d")
    merged = model.merge_contacts(destination, source, T1)
    old_entry = {k: v for k, v in merged["merge_history"][-1].items() if k not in model.HISTORY_ENTRY_FIELDS}
    merged["merge_history"] = [old_entry]
    restored, after = model.unmerge(merged, source["id"], T2)
    assert _timeless(restored) == _timeless(source)
    assert "conversations" not in after and after["title"] == "t" and "merge_history" not in after


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_digits_are_the_ascii_digits(text):
    assert I.digits(text) == "".join(c for c in text if c.isdigit() and c.isascii())


def test_a_normalized_number_is_the_same_from_the_cache():
    first = I.normalize_phone("+49 170 1234567", None)
    assert I.normalize_phone("+49 170 1234567", None) == first == "+491701234567"
    assert I.normalize_phone("0170 1234567", "DE") == "+491701234567"
    assert I.normalize_phone("0170 1234567", None) == "01701234567"  # no region: its digits


def test_a_via_key_spelled_like_the_nul_escape_keeps_its_header_but_a_real_nul_does_not():
    spelled = {"id": str(uuid.uuid4()), "via": {"\\U0000": "0"}}  # case-folded to the text \u0000
    assert I.decode(I.header(spelled, "US")[I.HEADER]) is not None
    assert I.decode('[2,[["x\\u0000","1"]],[]]') is None
