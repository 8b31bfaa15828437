"""The seed page's sample contact (DESIGN.md), shared by the tests and the benchmark."""

CONVERSATION_A = "ea1cba21-2bd6-477c-9a40-59cd9bb96bef"
CONVERSATION_B = "8904adee-38b4-493b-a4d8-272e2e5a6815"

# The seed page's create request, without its // comments.
SEED_CONTACT = {
    "display_name": "Barabara Liskov",
    "avatar_url": "https://example.org/avatar.jpg",
    "title": "Professor",
    "timezone": "",
    "gender": "female",
    "locale": "en_US",
    "organization_name": "Massachusetts Institute of Technology",
    "via": {"phone": "+1234567", "email": "b.liskov@mit.org", "key": "value"},
    "address": {
        "organization_name": "Massachusetts Institute of Technology",
        "address_line1": "77 Massachusetts Ave",
        "address_line2": "building A",
        "postcode": "02139",
        "city": "Cambridge",
        "state": "MA",
        "country": "USA",
    },
    "conversations": {CONVERSATION_A: "facebook", CONVERSATION_B: "twilio.sms"},
    "metadata": {
        "facebook": {"psid": "1234567890", "page_id": "9876543210"},
        "salesforce_id": "ABC123",
        "zendesk_id": "XYZ789",
        "key": "value",
    },
}
