"""Builders of the platform's own records (Airy's `Message` and `Metadata`), as the platform writes
them: for the tests, the benchmark and the demo, never the service."""

from __future__ import annotations


def airy_message(conversation_id: str, source: str, message_id: str, sent_at_ms: int, content: str = '{"text":"hello"}') -> dict:
    """A ``Message`` record as the platform writes one from a contact (for message_codec)."""
    return {
        "id": message_id,
        "headers": None,
        "isFromContact": True,
        "deliveryState": "DELIVERED",
        "senderId": "sender",
        "sourceRecipientId": None,
        "conversationId": conversation_id,
        "channelId": "channel",
        "source": source,
        "content": content,
        "sentAt": sent_at_ms,
        "updatedAt": None,
    }


def airy_metadata(conversation_id: str, key: str, value: str, timestamp_ms: int) -> dict:
    """A ``Metadata`` record about a conversation (for metadata_codec), e.g. contact.display_name."""
    return {"subject": f"conversation:{conversation_id}", "key": key, "value": value, "valueType": "text", "timestamp": timestamp_ms}
